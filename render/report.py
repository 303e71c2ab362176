"""The backtest report: plots (matplotlib, Agg — no display) and one self-contained HTML page that embeds them
(PNG as data URIs) with the metrics, their definitions and the breakdown tables. It knows nothing of the
engine: it is handed a :class:`ReportData` of plain numbers.

Figures (also written as PNG files beside the page):

* ``equity.png`` — equity of the strategy and of the buy-and-hold benchmark, KRW, over market time (UTC);
* ``drawdown.png`` — the strategy's drawdown from its running peak, %;
* ``markets.png`` — realized P&L per market, KRW (green profit, red loss);
* ``monthly.png`` — the strategy's return per calendar month (UTC), %;
* ``chart.png`` — one market's 30-minute closes with every buy (▲) and sell (▼) fill.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.ticker import FuncFormatter

GREEN, RED, BLUE, GREY = "#2e9d55", "#d2453c", "#2f6fb3", "#8a8f98"
Row = tuple[str, int, int, float, float]   # group, trades, won, realized KRW, fees KRW


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows. Times are Unix seconds UTC; money float64 KRW."""
    title: str
    subtitle: str
    metrics: list[tuple[str, str, str]]          #: (name, value as shown, definition)
    equity_t: np.ndarray
    equity: np.ndarray
    benchmark: np.ndarray                        #: buy-and-hold equity at ``equity_t``
    per_market: list[Row]
    per_exit: list[Row]
    per_month: list[Row]
    monthly_return_pct: list[tuple[str, float]]
    events: list[tuple[str, str, str]] = field(default_factory=list)   #: (day, what, why): risk trips, mode changes
    chart_market: str = ""
    chart_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    chart_close: np.ndarray = field(default_factory=lambda: np.zeros(0))
    buys: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))    #: (t, price)
    sells: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))


def _dates(t: np.ndarray) -> np.ndarray:
    return (np.asarray(t, dtype="int64") * 1000).astype("datetime64[ms]")


def _fig(width: float = 10.0, height: float = 3.2):
    fig = Figure(figsize=(width, height), dpi=110)     # no pyplot: no global figure registry, no GUI backend
    ax = fig.subplots()
    ax.grid(True, color="#e4e6ea", linewidth=0.8)
    ax.set_axisbelow(True)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    return fig, ax


def _time_axis(ax) -> None:
    loc = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))


def _krw(ax) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def figures(d: ReportData) -> dict[str, bytes]:
    """The PNGs, by file name."""
    out: dict[str, bytes] = {}
    t = _dates(d.equity_t)

    fig, ax = _fig()
    ax.plot(t, d.benchmark, color=GREY, linewidth=1.2, label="buy and hold, equal weight")
    ax.plot(t, d.equity, color=BLUE, linewidth=1.6, label="strategy")
    ax.set_title("Equity (KRW, fees paid)", loc="left", fontsize=11)
    ax.legend(frameon=False, loc="upper left")
    _time_axis(ax)
    _krw(ax)
    out["equity.png"] = _png(fig)

    fig, ax = _fig(height=2.4)
    eq = np.asarray(d.equity, float)
    dd = (eq / np.maximum.accumulate(eq) - 1.0) * 100.0 if len(eq) else eq
    ax.fill_between(t, dd, 0, color=RED, alpha=0.35, linewidth=0)
    ax.plot(t, dd, color=RED, linewidth=1.0)
    ax.set_title("Drawdown from the running peak (%)", loc="left", fontsize=11)
    _time_axis(ax)
    out["drawdown.png"] = _png(fig)

    fig, ax = _fig(height=max(2.4, 0.28 * len(d.per_market) + 0.8))
    rows = sorted(d.per_market, key=lambda r: r[3])
    names, pnl = [r[0] for r in rows], [r[3] for r in rows]
    ax.barh(names, pnl, color=[GREEN if v > 0 else RED for v in pnl])
    ax.axvline(0, color="#444", linewidth=0.8)
    ax.set_title("Realized P&L per market (KRW, closed trades)", loc="left", fontsize=11)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.tick_params(axis="y", labelsize=8)
    out["markets.png"] = _png(fig)

    fig, ax = _fig(height=2.6)
    months, ret = [m for m, _ in d.monthly_return_pct], [r for _, r in d.monthly_return_pct]
    ax.bar(months, ret, color=[GREEN if v > 0 else RED for v in ret])
    ax.axhline(0, color="#444", linewidth=0.8)
    for i, v in enumerate(ret):
        ax.annotate(f"{v:+.2f} %", (i, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
    ax.set_title("Return per month (UTC, %)", loc="left", fontsize=11)
    out["monthly.png"] = _png(fig)

    if d.chart_market and len(d.chart_t):
        fig, ax = _fig(height=3.6)
        ax.plot(_dates(d.chart_t), d.chart_close, color="#33363b", linewidth=0.9, label="30-minute close")
        ax.scatter(_dates(d.buys[0]), d.buys[1], marker="^", s=34, color=GREEN, label="buy fill", zorder=3)
        ax.scatter(_dates(d.sells[0]), d.sells[1], marker="v", s=34, color=RED, label="sell fill", zorder=3)
        ax.set_title(f"{d.chart_market}: price with the strategy's fills (KRW)", loc="left", fontsize=11)
        ax.legend(frameon=False, loc="upper left")
        _time_axis(ax)
        _krw(ax)
        out["chart.png"] = _png(fig)
    return out


def _png(fig) -> bytes:
    """The figure as PNG bytes: laid out, drawn once by Agg and encoded (``savefig`` would draw it again)."""
    canvas = FigureCanvasAgg(fig)
    fig.tight_layout()
    canvas.draw()
    buf = io.BytesIO()
    imsave(buf, np.asarray(canvas.buffer_rgba()), format="png", dpi=fig.dpi)
    return buf.getvalue()


def _table(title: str, rows: list[Row]) -> str:
    body = "".join(f"<tr><td>{html.escape(g)}</td><td>{n:,}</td><td>{w:,}</td>"
                   f"<td class='{'pos' if p > 0 else 'neg'}'>{p:+,.0f}</td><td>{f:,.0f}</td></tr>"
                   for g, n, w, p, f in rows)
    return (f"<div><h2>{html.escape(title)}</h2><table class='num'><tr><th></th><th>trades</th><th>won</th>"
            f"<th>realized KRW</th><th>fees KRW</th></tr>{body}</table></div>")


def _events(events: list[tuple[str, str, str]]) -> str:
    if not events:
        return "<h2>Risk trips and mode changes</h2><p>none</p>"
    rows = "".join(f"<tr><td>{html.escape(d)}</td><td>{html.escape(w)}</td><td class='def'>{html.escape(y)}</td>"
                   f"</tr>" for d, w, y in events)
    return f"<h2>Risk trips and mode changes</h2><table>{rows}</table>"


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1120px;color:#222}
h1{font-size:22px;margin:0}p.sub{color:#666;margin:4px 0 18px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;margin:4px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
table.num td:not(:first-child),table.num th:not(:first-child){text-align:right}td.pos{color:#2e9d55}
td.neg{color:#d2453c}td.def{color:#666;font-size:12.5px}img{max-width:100%;display:block;margin:6px 0}
.cols{display:flex;gap:28px;flex-wrap:wrap}"""


def write_report(d: ReportData, out_dir: Path) -> Path:
    """Write the PNGs and ``report.html`` (self-contained) into ``out_dir``; returns the page's path."""
    out_dir = Path(out_dir)
    pngs = figures(d)
    for name, data in pngs.items():
        (out_dir / name).write_bytes(data)

    def img(name: str, alt: str) -> str:
        if name not in pngs:
            return ""
        return (f"<img id='{name.split('.')[0]}' alt='{html.escape(alt)}' "
                f"src='data:image/png;base64,{base64.b64encode(pngs[name]).decode()}'>")
    metrics = "".join(f"<tr><td>{html.escape(n)}</td><td><b>{html.escape(v)}</b></td>"
                      f"<td class='def'>{html.escape(dfn)}</td></tr>" for n, v, dfn in d.metrics)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(d.title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(d.title)}</h1>"
            f"<p class='sub'>{html.escape(d.subtitle)}</p><table>{metrics}</table>"
            f"{img('equity.png', 'equity curve')}{img('drawdown.png', 'drawdown')}"
            f"{img('monthly.png', 'monthly returns')}{img('markets.png', 'P&L per market')}"
            f"{img('chart.png', 'price chart with fills')}<div class='cols'>{_table('Per market', d.per_market)}"
            f"{_table('Per exit reason', d.per_exit)}{_table('Per month (UTC, by exit)', d.per_month)}</div>"
            f"{_events(d.events)}</body></html>")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def heatmap_png(xs: list[float], ys: list[float], z: np.ndarray, xlabel: str, ylabel: str, title: str) -> bytes:
    """A heat map of ``z[len(ys), len(xs)]`` (% values, NaN = not run), each cell labelled, diverging at 0."""
    fig = Figure(figsize=(max(5.0, 0.62 * len(xs) + 2.2), max(3.0, 0.42 * len(ys) + 1.4)), dpi=110)
    ax = fig.subplots()
    lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    im = ax.imshow(z, cmap="RdYlGn", vmin=-lim, vmax=lim, origin="lower", aspect="auto")
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left", fontsize=11)
    for (r, c), v in np.ndenumerate(z):
        ax.text(c, r, "–" if not np.isfinite(v) else f"{v:+.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="%")
    return _png(fig)


def overlay_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes:
    """Several equity curves (name -> (Unix s, KRW)) on one plot."""
    fig, ax = _fig(height=3.6)
    for i, (name, (t, eq)) in enumerate(curves.items()):
        ax.plot(_dates(t), eq, linewidth=1.4 if name != "buy and hold" else 1.1,
                color=GREY if name == "buy and hold" else colormaps["tab10"](i), label=name)
    ax.set_title(title, loc="left", fontsize=11)
    ax.legend(frameon=False, loc="best")
    _time_axis(ax)
    _krw(ax)
    return _png(fig)


def write_page(out_dir: Path, name: str, title: str, subtitle: str, images: dict[str, bytes],
               table_head: list[str], table_rows: list[list[str]]) -> Path:
    """A self-contained page: the images (also written as PNG files) and one table."""
    out_dir = Path(out_dir)
    imgs = ""
    for fname, data in images.items():
        (out_dir / fname).write_bytes(data)
        imgs += (f"<img id='{fname.split('.')[0]}' alt='{html.escape(fname)}' "
                 f"src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table_head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table_rows)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='sub'>{html.escape(subtitle)}"
            f"</p>{imgs}<table class='num'><tr>{head}</tr>{rows}</table></body></html>")
    path = out_dir / name
    path.write_text(page, encoding="utf-8")
    return path
