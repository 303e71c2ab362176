"""Number formatting for what the monitor and the CLI show (no VisPy or Qt here)."""
from __future__ import annotations


def format_krw(p: float) -> str:
    """KRW price as a plain number: ``123,456,000``; decimals only below 1,000 KRW
    (``4,460`` → ``4,460``, ``0.02814`` → ``0.02814``); NaN → ``-``."""
    if p != p:
        return "-"
    if abs(p) >= 1000:
        return f"{p:,.0f}"
    if abs(p) >= 1:
        return f"{p:,.2f}".rstrip("0").rstrip(".")
    return f"{p:.8f}".rstrip("0").rstrip(".")
