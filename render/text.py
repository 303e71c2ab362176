"""Number formatting for what the monitor and the CLI show (no VisPy or Qt here)."""
from __future__ import annotations

import math
import time
from bisect import bisect_right
from itertools import accumulate


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


def format_signed_krw(p: float) -> str:
    """A KRW amount with its sign: ``+12,300`` / ``-4,560`` / ``0``; NaN → ``-``."""
    if p != p:
        return "-"
    s = format_krw(abs(p))
    return s if s == "0" else ("+" if p > 0 else "-") + s


def format_qty(q: float, sig: int = 6) -> str:
    """A quantity of the base currency with about ``sig`` significant digits and no exponent:
    ``0.0073412``, ``12.5``, ``1,234,568``; NaN → ``-``."""
    if q != q:
        return "-"
    if abs(q) >= 1000:
        return f"{q:,.0f}"
    if q == 0:
        return "0"
    digits = max(0, sig - 1 - int(math.floor(math.log10(abs(q)))))
    return f"{q:.{digits}f}".rstrip("0").rstrip(".")


def format_qty_exact(q: float) -> str:
    """A quantity as recorded (orders, fills, the timeline): thousands separators, up to 8 decimals, never
    rounded to whole units — ``41,953,366.76552877``, ``0.0160845``; NaN → ``-``."""
    if q != q:
        return "-"
    return f"{q:,.8f}".rstrip("0").rstrip(".")


def format_market_ms(ms: int, fmt: str = "%m-%d %H:%M") -> str:
    """Market time (Unix ms UTC) as UTC text; 0 → ``-``."""
    if not ms:
        return "-"
    return time.strftime(fmt, time.gmtime(ms / 1000))


#: Approximate advance widths of the monitor's font (OpenSans) in em, for fitting text to a column.
_NARROW = set("iljtfr.,:;'|!()[] ")
_WIDE = set("mwMW@%")


def _em(ch: str) -> float:
    return 0.3 if ch in _NARROW else 0.88 if ch in _WIDE else 0.66 if ch.isupper() else 0.56


def text_width(s: str, font_px: float) -> float:
    """Approximate rendered width of ``s`` in pixels (OpenSans at ``font_px`` pixels per em)."""
    return sum(map(_em, s)) * font_px


def wrap(s: str, widths: list[float], font_px: float) -> list[str]:
    """``s`` cut into at most ``len(widths)`` lines, line k at most ``widths[k]`` pixels wide (at word
    boundaries where possible); what does not fit ends in an ellipsis. One pass over the text."""
    rest = s.strip()
    lines: list[str] = []
    for k, w in enumerate(widths):
        if not rest:
            break
        last = k == len(widths) - 1
        edges = list(accumulate((_em(ch) * font_px for ch in rest), initial=0.0))  # edges[i]: width of rest[:i]
        if edges[-1] <= w:
            lines.append(rest)
            break
        room = w - (_em("…") * font_px if last else 0.0)
        cut = max(bisect_right(edges, room) - 1, 1)
        if not last and " " in rest[1:cut + 1]:
            cut = rest.rindex(" ", 1, cut + 1)
        lines.append(rest[:cut].rstrip() + ("…" if last else ""))
        rest = rest[cut:].lstrip()
    return lines
