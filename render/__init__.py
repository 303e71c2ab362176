"""Every pixel of SMTM-NG: the VisPy chart (:mod:`render.chart`) and how it runs, in a PyQt6
window or off-screen through EGL (:mod:`render.app`). Nothing outside this package imports
Qt or VisPy."""
