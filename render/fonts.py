"""Faster glyph loading for VisPy text on a cold start.

VisPy rasterizes each glyph through freetype-py, whose ``Bitmap.buffer`` builds a Python
list one byte at a time: ~6 ms a glyph, ~0.6 s of the monitor's first frame (92 glyphs).
:func:`install` replaces that property with a single ``ctypes`` copy into a uint8 numpy
array, which ``np.array(...)`` in VisPy consumes unchanged. Same bytes, same glyphs.
"""
from __future__ import annotations

import ctypes

import numpy as np

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    try:
        import freetype
    except ImportError:  # VisPy falls back to its own font path; nothing to speed up
        return

    def _buffer(self):
        n = self.rows * abs(self.pitch)
        if n == 0:
            return np.zeros(0, np.uint8)
        return np.frombuffer(ctypes.string_at(self._FT_Bitmap.buffer, n), np.uint8)

    freetype.Bitmap.buffer = property(_buffer)
    _installed = True
