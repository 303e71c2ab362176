"""The benchmark report: ``report.md`` (GitHub-readable markdown) and PNG plots from the figures the benchmarks put in
``bench.conftest.RESULTS``, with the machine they ran on and the load observed during each measurement.

``make bench`` writes it into ``bench/report`` (``--bench-report DIR``); ``python -m bench.report DIR`` draws it
again from ``DIR/results.json`` and ``DIR/machine.json``.

An entry of RESULTS is a dict; its ``"group"`` says what it is (:data:`GROUPS`). Entries without one are classified
from their keys as the terminal summary always did (:func:`group_of`). Every entry may carry ``"load"``:
``{"load1_before", "load1_after", "cpu_busy_pct", "steal_pct", "test_s"}`` (set by the conftest around each test)
and ``"label"`` (the row's name; else its key). The fields per group:

* ``wake`` — key ``"<transport> [<machine>]"``: ``p50_us``, ``p99_us``, ``max_us``, ``n``, optional ``p999_us``
  and ``samples_us`` (µs, any order);
* ``snapshot`` — ``median_us`` per method;
* ``e2e`` — ``rate_target``, ``rate_sustained`` (trades/s), ``duration_s``, ``monitor`` (bool or "on"/"off"),
  ``stages``: ``{stage: {"p50_us", "p99_us", "p999_us", "max_us", "n", optional "samples_us"}}`` in pipeline order;
* ``throughput`` — ``label``, ``wall_s``, ``trades``, ``trades_per_s``, optional ``cpu_s`` ``{process: s}``;
* ``monitor`` — ``fps``, ``frame_ms`` ``{"p50", "p99", "max"}``, ``mode`` ("window" / "offscreen"), ``rate``;
* ``scale`` — ``markets``, ``indicator_updates_per_s``, ``ingest_trades_per_s``,
  ``shm_bytes_per_market_per_timeframe``, optional ``table`` (a dict, or a dict of dicts, drawn as a table);
* ``idle_cpu`` — ``cpu_pct`` (% of one core); ``indicators`` — ``median_us`` or ``updates_per_s``;
  ``backtest`` — ``wall_s``, ``units``, ``unit``; ``orders`` — ``p50_us``, ``p99_us``, ``max_us``, ``n``;
  ``trader`` — ``p50_us``, ``p99_us``, ``max_us``, ``n``, ``trades_per_s``.

A row is a peer (the comparison, named in ratios) when its key or label says "peer" or it has ``"peer": True``.
"""
from __future__ import annotations

import json
import math
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from bench import stalls

#: the groups in the order the report shows them, with their section titles
GROUPS = {
    "wake": "One-way wake latency, writer → reader process",
    "snapshot": "Reading a snapshot of 200 candles",
    "e2e": "End-to-end latency under load",
    "throughput": "Throughput",
    "monitor": "Monitor",
    "scale": "Scaling with the number of markets",
    "trader": "Trade → trader latency",
    "orders": "Order round trip against the replay exchange",
    "indicators": "Indicators",
    "backtest": "Backtest speed",
    "idle_cpu": "CPU used by an idle consumer",
    "other": "Other figures",
}
#: names for the terse keys of the entries written before groups existed
LABELS = {
    "copy": "ring copy of the last 200 candles",
    "json": "json.loads of the same 200 candles (Upbit REST JSON)",
    "incremental": "all indicators, one incremental update per candle",
    "talib_recompute": "TA-Lib recompute of all indicators over 1,000 candles (peer)",
    "100 markets": "incremental updates across 100 markets",
}
LIBRARIES = ("numpy", "pyzmq", "redis", "hiredis", "vispy", "PyQt6", "orjson", "websocket-client", "aiohttp",
             "requests", "posix_ipc", "matplotlib", "TA-Lib", "pandas", "backtesting", "pytest", "pytest-benchmark")
DPI = 110
RC = {"font.size": 10, "axes.titlesize": 11.5, "axes.titlelocation": "left", "axes.labelsize": 10,
      "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False,
      "axes.spines.right": False, "axes.grid": True, "grid.color": "#e4e6ea", "grid.linewidth": 0.8,
      "axes.axisbelow": True, "legend.frameon": False}
BLUE, ORANGE, GREY = "#2f6fb3", "#e07b39", "#8a8f98"
LOAD_NOTE = ("*load* — the 1-minute load average before → after the measurement, the whole machine's CPU busy "
             "during it (100 % = every core, from /proc/stat; the benchmark's own processes included), the *steal* "
             "(the share of that time the hypervisor ran other guests while this machine's virtual CPUs had work, "
             "as the guest kernel counts it) and its wall time. A load average near the core count or a busy share "
             "well above what the benchmark itself uses means other work shared the machine.")


# -- classification and formatting ----------------------------------------------------------------------------------
def group_of(key: str, v: dict) -> str:
    """The entry's group: its ``"group"``, else what its keys say (the terminal summary's rules)."""
    g = v.get("group")
    if g:
        return str(g)
    if key.endswith("]") and "p50_us" in v:
        return "wake"
    if key in ("copy", "json"):
        return "snapshot"
    if "cpu_pct" in v:
        return "idle_cpu"
    if "trades_per_s" in v:
        return "trader"
    if "wall_s" in v:
        return "backtest"
    if "rtt" in v:
        return "orders"
    if "median_us" in v or "updates_per_s" in v:
        return "indicators"
    return "other"


def label_of(key: str, v: dict) -> str:
    return str(v.get("label") or LABELS.get(key, key))


def is_peer(key: str, v: dict) -> bool:
    return bool(v.get("peer")) or "peer" in key.lower() or "peer" in str(v.get("label", "")).lower() \
        or key == "talib_recompute"


def _num(x) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def dur(us) -> str:
    """A duration given in µs, in the unit that reads best: 3.04 µs, 15.6 µs, 412 µs, 1.92 ms, 652 ms, 1.2 s."""
    x = _num(us)
    if x is None:
        return "–"
    for scale, unit in ((1e6, "s"), (1e3, "ms"), (1.0, "µs")):
        if abs(x) >= scale or unit == "µs":
            y = x / scale
            s = f"{y:.3g}"
            return f"{s if 'e' not in s else f'{y:,.0f}'} {unit}"
    return "–"  # pragma: no cover


def num(x, digits: int = 3) -> str:
    """A count or a rate: commas above 1,000, ``digits`` significant digits below."""
    f = _num(x)
    if f is None:
        return "–"
    if abs(f) >= 10 ** digits - 0.5 or f == int(f):   # 999.97 is "1,000", not "1e+03"
        return f"{f:,.0f}"
    return f"{f:.{digits}g}"


def load_cell(v: dict) -> str:
    ld = v.get("load")
    if not isinstance(ld, dict):
        return f"{v['load1']:.2f} after" if _num(v.get("load1")) is not None else "–"
    parts = []
    b, a = _num(ld.get("load1_before")), _num(ld.get("load1_after"))
    if b is not None and a is not None:
        parts.append(f"{b:.2f} → {a:.2f}")
    if _num(ld.get("cpu_busy_pct")) is not None:
        parts.append(f"CPU {ld['cpu_busy_pct']:.0f} %")
    if _num(ld.get("steal_pct")) is not None:
        parts.append(f"steal {ld['steal_pct']:.1f} %")
    if _num(ld.get("test_s")) is not None:
        parts.append(f"{ld['test_s']:.1f} s")
    return " · ".join(parts) or "–"


def table(header: list[str], rows: list[list[str]], right: Iterable[int] = ()) -> str:
    """A GitHub markdown table; ``right``: the columns aligned right (numbers)."""
    def cell(s) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ").strip() or " "
    right = set(right)
    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "| " + " | ".join("---:" if i in right else "---" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _samples(x) -> np.ndarray | None:
    if x is None:
        return None
    a = np.asarray(x, dtype=float).ravel()
    a = a[np.isfinite(a)]
    return a if a.size else None


def thin(samples, k: int = 2000) -> np.ndarray:
    """At most ``k`` quantile points of ``samples`` (evenly spaced in probability, min and max kept), sorted."""
    a = np.sort(np.asarray(samples, dtype=float).ravel())
    if a.size <= k:
        return a
    return np.quantile(a, np.linspace(0.0, 1.0, k))


def p999(v: dict) -> float | None:
    if _num(v.get("p999_us")) is not None:
        return float(v["p999_us"])
    s = _samples(v.get("samples_us"))
    return float(np.percentile(s, 99.9)) if s is not None and s.size >= 1000 else None


# -- plotting helpers -----------------------------------------------------------------------------------------------
def _fig(width: float, height: float, nrows: int = 1, ncols: int = 1, **kw):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")  # no pyplot: no GUI backend, no registry
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _save(fig, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI)
    return name


def _dur_axis(axis) -> None:
    axis.set_major_formatter(FuncFormatter(lambda v, _: dur(v)))
    axis.set_minor_formatter(NullFormatter())


def _count_axis(axis) -> None:
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_ticks(axis) -> None:
    """On a log axis spanning less than three decades, ticks at 1, 2 and 5 of each decade too (else it shows one
    or two labels)."""
    lo, hi = sorted(axis.get_view_interval())
    if lo > 0 and hi / lo < 1000:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))


def _legend(fig, axes, ncols: int) -> None:
    """One legend for the figure, below the plots, filled row by row (matplotlib fills columns) in the order the
    lines were drawn, each label once."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not labels:
        return
    ncols = max(1, min(ncols, len(labels)))
    nrows = math.ceil(len(labels) / ncols)
    order = [r * ncols + c for c in range(ncols) for r in range(nrows) if r * ncols + c < len(labels)]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=ncols)


def _wrap(s: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(s, width)) or s


CDF_TICKS = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999)


def _cdf_points(v: dict, points: int = 800) -> tuple[np.ndarray, np.ndarray, bool]:
    """(latency µs, cumulative share, from samples?) for a CDF on a logit axis: the empirical points spaced
    evenly in logit(share) so the tail is drawn as finely as the body; the percentiles alone without samples."""
    s = _samples(v.get("samples_us"))
    if s is not None:
        s = np.sort(s)
        n = s.size
        lo, hi = 0.5 / n, 1 - 0.5 / n
        if n > points:
            q = np.linspace(math.log(lo / (1 - lo)), math.log(hi / (1 - hi)), points)
            idx = np.unique(np.clip(np.rint(n / (1 + np.exp(-q)) - 0.5), 0, n - 1).astype(int))
        else:
            idx = np.arange(n)
        return s[idx], (idx + 0.5) / n, True
    xs, ys = [], []
    n = _num(v.get("n")) or 0
    for key, share in (("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999), ("max_us", 1 - 0.5 / n if n else None)):
        if share is not None and _num(v.get(key)) is not None and share > (ys[-1] if ys else 0):
            xs.append(float(v[key]))
            ys.append(share)
    return np.array(xs), np.array(ys), False


def _cdf_axes(ax, top: float) -> None:
    ax.set_xscale("log")
    _dur_axis(ax.xaxis)
    ax.set_yscale("logit")
    ticks = [t for t in CDF_TICKS if t <= top * 1.0000001]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:g} %"))
    ax.yaxis.set_minor_locator(FixedLocator([]))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0.01, 1 - (1 - max(top, 0.999)) * 0.7)
    _log_ticks(ax.xaxis)
    ax.set_xlabel("latency (log scale)")


def _draw_cdf(ax, v: dict, color, label: str, linestyle: str = "-") -> float:
    """One CDF line; returns the highest share drawn."""
    x, y, full = _cdf_points(v)
    if not len(x):
        return 0.0
    keep = y >= 0.005
    if full:
        ax.plot(x[keep], y[keep], color=color, linewidth=1.5, linestyle=linestyle, label=label)
    else:
        ax.plot(x, y, color=color, linewidth=1.0, linestyle=":", marker="o", markersize=4,
                label=f"{label} (percentiles only)")
    return float(y.max())


def _hbars(out: Path, name: str, title: str, xlabel: str, rows: list[tuple[str, float, str]], log: bool = False,
           fmt=None, peer_color: list[bool] | None = None) -> str:
    """A horizontal bar chart, one bar per (label, value, text on the bar's end), the first row on top."""
    fig, axes = _fig(8.6, 0.5 * len(rows) + 1.3)
    ax = axes[0, 0]
    ys = np.arange(len(rows))[::-1]
    vals = [r[1] for r in rows]
    colors = [GREY if peer_color and peer_color[i] else BLUE for i in range(len(rows))]
    ax.barh(ys, vals, color=colors, height=0.6)
    ax.set_yticks(ys, [_wrap(r[0], 40) for r in rows])
    ax.grid(False, axis="y")
    for y, (_, val, text) in zip(ys, rows):
        ax.annotate(text, (val, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=9)
    if log:
        ax.set_xscale("log")
        lo, hi = min(vals), max(vals)
        ax.set_xlim(lo / 3, hi * 8)
        _log_ticks(ax.xaxis)
    else:
        ax.set_xlim(0, max(vals) * 1.25 if max(vals) > 0 else 1)
    if fmt is not None:
        fmt(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, out, name)


# -- sections -------------------------------------------------------------------------------------------------------
def _wake(entries: list[tuple[str, dict]], out: Path) -> str:
    def split(k: str) -> tuple[str, str]:
        return (k[:k.rindex(" [")], k[k.rindex("[") + 1:-1]) if k.endswith("]") and " [" in k else (k, "")
    machines = list(dict.fromkeys(split(k)[1] for k, _ in entries))
    names = list(dict.fromkeys(split(k)[0] for k, _ in entries))
    by = {split(k): v for k, v in entries}
    md = ["Each message is a 64-byte record; the writer stamps CLOCK_MONOTONIC into it, the reader subtracts on "
          "receipt. Cells: p50 / p99 / p99.9 / max (p99.9 from the samples, where the entry has them).\n"]
    header = ["transport"]
    for m in machines:
        header += [m or "latency", f"load ({m})" if m else "load"]
    rows = []
    for n in names:
        row = [n]
        for m in machines:
            v = by.get((n, m))
            if v is None:
                row += ["–", "–"]
                continue
            row += [" / ".join(dur(x) for x in (v.get("p50_us"), v.get("p99_us"), p999(v), v.get("max_us")))
                    + f" (n={num(v.get('n'))})", load_cell(v)]
        rows.append(row)
    md.append(table(header, rows))
    fig, axes = _fig(5.2 * len(machines) + 0.4, 4.6, 1, len(machines), sharex=True, sharey=True)
    colors = {n: colormaps["tab10"](i % 10) for i, n in enumerate(names)}
    top = 0.0
    for ax, m in zip(axes[0], machines):
        for n in names:
            if (n, m) in by:
                top = max(top, _draw_cdf(ax, by[(n, m)], colors[n], n))
        ax.set_title(f"machine: {m}" if m else "wake latency")
    for ax in axes[0]:
        _cdf_axes(ax, top)
    axes[0, 0].set_ylabel("share of messages ≤ latency (logit scale)")
    _legend(fig, axes, 3)
    fig.suptitle("One-way wake latency, writer → reader process: CDF per transport", x=0.01, ha="left",
                 fontsize=12)
    md.append(f"\n![wake latency CDF]({_save(fig, out, 'wake_cdf.png')})\n")
    return "\n".join(md)


def _snapshot(entries, out: Path) -> str:
    rows = [(label_of(k, v), float(v["median_us"]), v) for k, v in entries if _num(v.get("median_us"))]
    if not rows:
        return _generic(entries, out)
    fastest = min(r[1] for r in rows)
    sized = any(_num(v.get("bytes")) for _, _, v in rows)
    md = [table(["method", "median", "× the fastest", *(["payload bytes"] if sized else []), "load"],
                [[lab, dur(x), f"{x / fastest:,.1f}x", *([num(v.get("bytes"))] if sized else []), load_cell(v)]
                 for lab, x, v in rows], right=(1, 2, 3) if sized else (1, 2))]
    ring = [("ring" in lab.lower()) for lab, _, _ in rows]
    fig, axes = _fig(max(7.0, 1.35 * len(rows) + 2.2), 4.4)
    ax = axes[0, 0]
    xs = np.arange(len(rows))
    ax.bar(xs, [r[1] for r in rows], color=[BLUE if r else GREY for r in ring], width=0.6)
    ax.set_xticks(xs, [_wrap(r[0], 18) for r in rows], fontsize=8.5)
    ax.grid(False, axis="x")
    ax.set_yscale("log")
    _dur_axis(ax.yaxis)
    lo, hi = min(r[1] for r in rows), max(r[1] for r in rows)
    ax.set_ylim(lo / 3, hi * 6)
    _log_ticks(ax.yaxis)
    for x, (_, y, _) in zip(xs, rows):
        ax.annotate(dur(y), (x, y), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("median time per read (log scale)")
    ax.set_title("Reading 200 candles: median per method" + ("\n(blue: the shared-memory ring)" if any(ring) else ""))
    md.append(f"\n![snapshot read time]({_save(fig, out, 'snapshot.png')})\n")
    return "\n".join(md)


def _monitor_state(v: dict) -> str:
    """"off", "on", or how the monitor ran ("window", "offscreen")."""
    m = v.get("monitor")
    if m is None or m is False or str(m).lower() in ("off", "false", "0", ""):
        return "off"
    return "on" if m is True or str(m).lower() in ("on", "true", "1") else str(m)


def _rate(v: dict) -> float | None:
    return _num(v.get("rate_sustained")) or _num(v.get("rate_target"))


def _e2e(entries, out: Path) -> str:
    entries = sorted(entries, key=lambda kv: (_monitor_state(kv[1]), _num(kv[1].get("rate_target")) or 0))
    stages = list(dict.fromkeys(s for _, v in entries for s, st in (v.get("stages") or {}).items() if st.get("n")))
    md = ["Latency of each stage from the trade frame's arrival, per offered trade rate "
          "(p99.9 from the samples where the entry has none). A trade in flight on a core that the machine "
          "stops is late by that stall, whatever the processes do: the *stalls* rows of the machine table give "
          "their size and rate here, and each run's load its *steal*.\n"]
    for k, v in entries:
        md.append(f"**{label_of(k, v)}** — target {num(v.get('rate_target'))} trades/s, sustained "
                  f"{num(v.get('rate_sustained'))} trades/s over {num(v.get('duration_s'))} s, monitor "
                  f"{_monitor_state(v)}; load {load_cell(v)}\n")
        md.append(table(["stage", "p50", "p99", "p99.9", "max", "n"],
                        [[s, dur(st.get("p50_us")), dur(st.get("p99_us")), dur(p999(st)), dur(st.get("max_us")),
                          num(st.get("n"))] for s, st in (v.get("stages") or {}).items() if s in stages],
                        right=range(1, 6)))
    colors = {s: colormaps["tab10"](i % 10) for i, s in enumerate(stages)}
    monitors = list(dict.fromkeys(_monitor_state(v) for _, v in entries))
    rated = [(k, v) for k, v in entries if _rate(v)]
    if "off" in monitors:   # the load curve is the engine's own; the runs with the monitor are compared in a table
        monitors = ["off"]
    if rated and stages:
        fig, axes = _fig(max(8.0, 5.6 * len(monitors) + 0.6), 4.8, 1, len(monitors), sharey=True)
        for ax, mon in zip(axes[0], monitors):
            es = sorted((v for _, v in rated if _monitor_state(v) == mon), key=_rate)
            firsts: dict[float, dict] = {}
            for v in es:     # a line through the first run at each target rate; repeated runs as markers only
                firsts.setdefault(_num(v.get("rate_target")) or 0, v)
            for s in stages:
                for key, style, marker in (("p50_us", "-", "o"), ("p99_us", "--", "s")):
                    xy = [(_rate(v), float(v["stages"][s][key])) for v in firsts.values()
                          if _num((v.get("stages") or {}).get(s, {}).get(key))]
                    if xy:
                        ax.plot(*zip(*xy), linestyle=style, marker=marker, markersize=5, color=colors[s])
                    more = [(_rate(v), float(v["stages"][s][key])) for v in es if v not in firsts.values()
                            and _num((v.get("stages") or {}).get(s, {}).get(key))]
                    if more:
                        ax.plot(*zip(*more), linestyle="none", marker=marker, markersize=6, color=colors[s],
                                markerfacecolor="none")
            rates = [_rate(v) for v in es]
            if rates and max(rates) / min(rates) > 10:
                ax.set_xscale("log")
            _count_axis(ax.xaxis)
            ax.set_yscale("log")
            _dur_axis(ax.yaxis)
            ax.set_xlabel("trade rate sustained (trades/s)")
            ax.set_title(f"monitor {mon}")
        axes[0, 0].set_ylabel("latency (log scale)")
        for ax in axes[0]:
            _log_ticks(ax.yaxis)
        # one entry per stage (its colour) and one per percentile (the line's style)
        handles = [Line2D([], [], color=colors[s], linewidth=2) for s in stages] + [
            Line2D([], [], color="#444", marker="o", markersize=5, label="p50"),
            Line2D([], [], color="#444", linestyle="--", marker="s", markersize=5, label="p99")]
        labels = [*stages, "p50", "p99"]
        ncols = 2 if len(monitors) == 1 else 3
        nrows = math.ceil(len(labels) / ncols)
        order = [r * ncols + c for c in range(ncols) for r in range(nrows) if r * ncols + c < len(labels)]
        fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=ncols)
        fig.suptitle("Latency vs load: p50 (solid) and p99 (dashed) per stage; hollow: a repeated run",
                     x=0.01, ha="left", fontsize=12)
        md.append(f"\n![latency vs load]({_save(fig, out, 'e2e_latency_vs_load.png')})\n")
    if stages:
        ncols = 2 if len(stages) in (2, 4) else min(3, len(stages))
        nrows = math.ceil(len(stages) / ncols)
        fig, axes = _fig(4.6 * ncols + 0.4, 3.9 * nrows + 0.9, nrows, ncols, sharex=True, sharey=True)
        runs = [k for k, _ in entries]
        cmap = colormaps["tab10"]
        top = 0.0
        for i, s in enumerate(stages):
            ax = axes[i // ncols, i % ncols]
            for k, v in entries:
                st = (v.get("stages") or {}).get(s)
                if st:
                    c = cmap(runs.index(k) % 10)
                    top = max(top, _draw_cdf(ax, st, c, _wrap(label_of(k, v), 40),
                                             "-" if _monitor_state(v) == "off" else "--"))
            ax.set_title(_wrap(s, 44), fontsize=10.5)
        for i, ax in enumerate(axes.flat):
            if i >= len(stages):
                ax.set_visible(False)
                continue
            _cdf_axes(ax, top)
            ax.tick_params(labelbottom=True)
            if i % ncols == 0:
                ax.set_ylabel("share ≤ latency (logit)")
        _legend(fig, axes, min(3, len(runs)))
        fig.suptitle("End-to-end latency CDF per stage, one line per run (dashed: the monitor running)", x=0.01,
                     ha="left", fontsize=12)
        md.append(f"\n![latency CDF per stage]({_save(fig, out, 'e2e_cdf.png')})\n")
    return "\n".join(md)


def _throughput(entries, out: Path) -> str:
    def cpu(v):
        c = v.get("cpu_s")
        return " · ".join(f"{p} {num(s)}" for p, s in c.items()) if isinstance(c, dict) and c else "–"
    md = [table(["run", "trades", "wall", "trades/s", "CPU s per process", "load"],
                [[label_of(k, v), num(v.get("trades")), dur((_num(v.get("wall_s")) or math.nan) * 1e6),
                  num(v.get("trades_per_s")), cpu(v), load_cell(v)] for k, v in entries], right=(1, 2, 3))]
    rows = [(label_of(k, v), float(v["trades_per_s"]), num(v["trades_per_s"])) for k, v in entries
            if _num(v.get("trades_per_s"))]
    if rows:
        name = _hbars(out, "throughput.png", "Trades per second, whole run", "trades/s", rows, fmt=_count_axis)
        md.append(f"\n![throughput]({name})\n")
    return "\n".join(md)


def _monitor(entries, out: Path, e2e: list[tuple[str, dict]]) -> str:
    def fm(v, q):
        f = v.get("frame_ms") or {}
        return dur((_num(f.get(q)) or math.nan) * 1e3)
    def iv(v, q):
        f = v.get("interval_ms") or {}
        return dur((_num(f.get(q)) or math.nan) * 1e3)
    md = [table(["run", "mode", "trade rate (trades/s)", "fps", "draw p50", "draw p99", "draw max",
                 "frame interval p99", "interval max", "intervals > 50 ms", "exit on SIGTERM", "load"],
                [[label_of(k, v), str(v.get("mode", "–")), num(v.get("rate")), num(v.get("fps")), fm(v, "p50"),
                  fm(v, "p99"), fm(v, "max"), iv(v, "p99"), iv(v, "max"),
                  _over_50(v),
                  str(v.get("sigterm_exit", "–")), load_cell(v)] for k, v in entries], right=range(2, 10))]
    md.append(_monitor_on_off(e2e))
    return "\n".join(md)


def _over_50(v: dict) -> str:
    """Frame intervals over 50 ms: the window's figure; off-screen the monitor renders at its ``headless_fps`` (10:
    every interval is 100 ms by design), so the count says nothing there."""
    if "over_50ms" not in v:
        return "–"
    if v.get("mode") == "offscreen":
        return f"– ({num(v.get('fps'))} fps by design)"
    return f"{num(v.get('over_50ms'))} of {num(v.get('frames'))}"


def _monitor_on_off(e2e: list[tuple[str, dict]]) -> str:
    """The engine's latency with the monitor off and on, at each rate measured both ways: p50 / p99 per run."""
    by_rate: dict[float, list[tuple[str, dict]]] = {}
    for k, v in e2e:
        by_rate.setdefault(_num(v.get("rate_target")) or 0, []).append((k, v))
    md = []
    for r, runs in sorted(by_rate.items()):
        if len({_monitor_state(v) for _, v in runs}) < 2:
            continue
        runs = sorted(runs, key=lambda kv: _monitor_state(kv[1]) != "off")
        stages = list(dict.fromkeys(s for _, v in runs for s in (v.get("stages") or {})))
        rows = [[s] + [f"{dur(st.get('p50_us'))} / {dur(st.get('p99_us'))}"
                       for st in ((v.get("stages") or {}).get(s, {}) for _, v in runs)] for s in stages]
        md.append(f"\nEngine latency at {num(r)} trades/s with the monitor off and on, p50 / p99 (from the "
                  "end-to-end runs):\n\n"
                  + table(["stage"] + [f"monitor {_monitor_state(v)}: {label_of(k, v)}" for k, v in runs], rows))
    return "\n".join(md)


def _dict_table(d: dict) -> str:
    if d and all(isinstance(x, dict) for x in d.values()):
        cols = list(dict.fromkeys(c for x in d.values() for c in x))
        return table(["", *cols], [[k, *(_fmt(x.get(c)) for c in cols)] for k, x in d.items()],
                     right=range(1, len(cols) + 1))
    return table(["", "value"], [[k, _fmt(x)] for k, x in d.items()], right=(1,))


def _fmt(x) -> str:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return "–" if x is None else str(x)
    if _num(x) is not None:
        return num(x)
    return str(x)


def size(b) -> str:
    """Bytes in the binary unit that reads best: 512 B, 64 KiB, 1.5 MiB."""
    x = _num(b)
    if x is None:
        return "–"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:,.0f} B"


#: the scale group's per-N figures: (field, column header, formatter)
SCALE_COLUMNS = (("ingest_trades_per_s", "ingest trades/s", num), ("pipeline_trades_per_s", "pipeline trades/s", num),
                 ("indicator_updates_per_s", "indicator updates/s", num),
                 ("shm_bytes", "shared memory reserved", size),
                 ("shm_bytes_allocated_after_pipeline", "allocated after the pipeline run", size),
                 ("shm_bytes_per_market_per_timeframe", "shm bytes / market / timeframe", num))


def _scale(entries, out: Path) -> str:
    entries = sorted(entries, key=lambda kv: _num(kv[1].get("markets")) or 0)
    cols = [c for c in SCALE_COLUMNS if any(_num(v.get(c[0])) is not None for _, v in entries)]
    md = [table(["markets", *(h for _, h, _ in cols), "load"],
                [[num(v.get("markets")), *(f(v.get(c)) for c, _, f in cols), load_cell(v)] for _, v in entries],
                right=range(len(cols) + 1))]
    md.append(_scale_memory(entries))
    for k, v in entries:
        if isinstance(v.get("table"), dict) and v["table"]:
            md.append(f"\n{label_of(k, v)}:\n\n" + _dict_table(v["table"]))
    panels = [(t, y, lines) for t, y, lines in (
        ("Trades per second", "trades/s", [("ingest_trades_per_s", "ingest (parse + candles + tape)"),
                                           ("pipeline_trades_per_s", "pipeline (ingest + indicators)")]),
        ("Indicator updates per second", "updates/s", [("indicator_updates_per_s", "indicator")]),
        ("Shared memory", "MiB", [("shm_bytes", "reserved"), ("shm_bytes_allocated_after_pipeline",
                                                             "allocated after the pipeline run")]))
        if any(_num(v.get(m)) and _num(v.get("markets")) for m, _ in lines for _, v in entries)]
    if panels:
        fig, axes = _fig(4.4 * len(panels) + 0.4, 4.0, 1, len(panels), sharex=True)
        markets = sorted({float(v["markets"]) for _, v in entries if _num(v.get("markets"))})
        for ax, (title, ylabel, lines) in zip(axes[0], panels):
            ys = []
            for i, (m, lab) in enumerate(lines):
                xy = [(float(v["markets"]), float(v[m]) / (2**20 if ylabel == "MiB" else 1)) for _, v in entries
                      if _num(v.get(m)) and _num(v.get("markets"))]
                if xy:
                    ax.plot(*zip(*xy), marker="o", color=(BLUE, ORANGE)[i % 2], label=lab)
                    ys += [y for _, y in xy]
            ax.set_xscale("log")
            ax.set_xticks(markets)
            _count_axis(ax.xaxis)
            if ylabel == "MiB" and max(ys) / max(min(ys), 1e-12) > 20:
                ax.set_yscale("log")
                _log_ticks(ax.yaxis)
            else:
                ax.set_ylim(0, max(ys) * 1.2)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
            ax.set_xlabel("markets (log scale)")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            if len([m for m, _ in lines if any(_num(v.get(m)) for _, v in entries)]) > 1:
                ax.legend(loc="best", fontsize=8.5)
        fig.suptitle("Scaling with the number of markets", x=0.01, ha="left", fontsize=12)
        md.append(f"\n![scaling]({_save(fig, out, 'scale.png')})\n")
    return "\n".join(md)


def _scale_memory(entries) -> str:
    """Shared memory per table: bytes per market row and what each table reserves at each market count."""
    per = next((v["shm_bytes_per_market_per_timeframe"] for _, v in reversed(entries)
                if isinstance(v.get("shm_bytes_per_market_per_timeframe"), dict)), None)
    by_n = [(v["markets"], v["shm_bytes_by_table"]) for _, v in entries
            if isinstance(v.get("shm_bytes_by_table"), dict)]
    if not per and not by_n:
        return ""
    names = list(dict.fromkeys([*(per or {}), *(t for _, d in by_n for t in d)]))
    rows = [[t, size(per.get(t)) if per and per.get(t) else ("0 (fixed)" if per else "–"),
             *(size(d.get(t)) for _, d in by_n)] for t in names]
    if by_n:
        rows.append(["**total**", "", *(f"**{size(sum(d.values()))}**" for _, d in by_n)])
    return ("\nShared memory per table (what each segment reserves; a page is allocated when first written): bytes per "
            "market row (per timeframe for the candle and indicator tables), and the table's size at each market "
            "count.\n\n" + table(["table", "per market", *(f"{num(n)} markets" for n, _ in by_n)], rows,
                                  right=range(1, 2 + len(by_n))))


def _lat_table(entries, extra: list[tuple[str, str]] = ()) -> str:
    """p50 / p99 / (p99.9 where some row has it) / max / n, the ``extra`` (header, field) columns and the load."""
    pcts = [("p50", lambda v: v.get("p50_us")), ("p99", lambda v: v.get("p99_us"))]
    if any(p999(v) is not None for _, v in entries):
        pcts.append(("p99.9", p999))
    pcts.append(("max", lambda v: v.get("max_us")))
    return table(["", *(h for h, _ in pcts), "n", *(h for h, _ in extra), "load"],
                 [[label_of(k, v), *(dur(f(v)) for _, f in pcts), num(v.get("n")),
                   *(num(v.get(f)) for _, f in extra), load_cell(v)] for k, v in entries],
                 right=range(1, len(pcts) + 2 + len(extra)))


def _trader(entries, out: Path) -> str:
    return _lat_table(entries, [("trades/s sustained", "trades_per_s")])


def _orders(entries, out: Path) -> str:
    md = [_lat_table(entries)]
    peer = next((v for k, v in entries if is_peer(k, v)), None)
    ours = [(k, v) for k, v in entries if not is_peer(k, v)]
    if peer and _num(peer.get("p50_us")):
        for k, v in ours:
            if _num(v.get("p50_us")) and _num(v.get("p99_us")) and _num(peer.get("p99_us")):
                md.append(f"- {label_of(k, v)} / the peer's: p50 {v['p50_us'] / peer['p50_us']:.1f}x, "
                          f"p99 {v['p99_us'] / peer['p99_us']:.1f}x")
        md.append("")
    rows = [(k, v) for k, v in entries if _num(v.get("p50_us")) and _num(v.get("p99_us"))]
    if rows:
        fig, axes = _fig(8.6, 0.75 * len(rows) + 1.5)
        ax = axes[0, 0]
        ys = np.arange(len(rows))[::-1]
        for off, key, color, what in ((0.18, "p50_us", BLUE, "p50"), (-0.18, "p99_us", ORANGE, "p99")):
            vals = [float(v[key]) for _, v in rows]
            ax.barh(ys + off, vals, height=0.34, color=color, label=what)
            for y, x in zip(ys, vals):
                ax.annotate(dur(x), (x, y + off), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8.5)
        ax.set_yticks(ys, [_wrap(label_of(k, v), 40) for k, v in rows])
        ax.grid(False, axis="y")
        ax.set_xlim(0, max(float(v["p99_us"]) for _, v in rows) * 1.25)
        _dur_axis(ax.xaxis)
        ax.set_xlabel("round trip")
        ax.set_title("Round trip p50 and p99 (the peer: the HTTP floor)")
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2)
        md.append(f"\n![order round trips]({_save(fig, out, 'orders.png')})\n")
    return "\n".join(md)


def _indicators(entries, out: Path) -> str:
    md = [table(["measurement", "median per call", "updates/s", "load"],
                [[label_of(k, v), dur(v.get("median_us")), num(v.get("updates_per_s")), load_cell(v)]
                 for k, v in entries], right=(1, 2))]
    med = [(k, v) for k, v in entries if _num(v.get("median_us"))]
    peer = next(((k, v) for k, v in med if is_peer(k, v)), None)
    if peer:
        for k, v in med:
            if not is_peer(k, v):
                md.append(f"- {label_of(*peer)} / {label_of(k, v)}: {peer[1]['median_us'] / v['median_us']:.1f}x "
                          "the time")
        md.append("")
    if len(med) >= 2:
        name = _hbars(out, "indicators.png", "Median time per candle (grey: the peer)", "time per call (log scale)",
                      [(label_of(k, v), float(v["median_us"]), dur(v["median_us"])) for k, v in med], log=True,
                      fmt=_dur_axis, peer_color=[is_peer(k, v) for k, v in med])
        md.append(f"\n![indicator update time]({name})\n")
    return "\n".join(md)


def _backtest(entries, out: Path) -> str:
    md = [table(["run", "wall (best of the rounds)", "work", "load"],
                [[label_of(k, v), dur((_num(v.get("wall_s")) or math.nan) * 1e6),
                  f"{num(v.get('units'))} {v.get('unit', '')}".strip(), load_cell(v)] for k, v in entries],
                right=(1, 2))]
    peer = next((v for k, v in entries if is_peer(k, v)), None)
    if peer and _num(peer.get("wall_s")):
        for k, v in entries:
            if not is_peer(k, v) and _num(v.get("wall_s")):
                md.append(f"- {label_of(k, v)} / the peer's: {v['wall_s'] / peer['wall_s']:.2f}x the wall time")
        md.append("")
    rows = [(label_of(k, v), float(v["wall_s"]), f"{v['wall_s']:.2f} s") for k, v in entries if _num(v.get("wall_s"))]
    if len(rows) >= 2:
        name = _hbars(out, "backtest.png", "Backtest wall time (grey: the peer)", "wall time (s)", rows,
                      peer_color=[is_peer(k, v) for k, v in entries if _num(v.get("wall_s"))])
        md.append(f"\n![backtest wall time]({name})\n")
    return "\n".join(md)


def _idle_cpu(entries, out: Path) -> str:
    md = [table(["consumer waiting on an idle ring", "CPU (% of one core)", "load"],
                [[label_of(k, v), f"{_num(v.get('cpu_pct')) or 0:.1f} %", load_cell(v)] for k, v in entries],
                right=(1,))]
    rows = [(label_of(k, v), float(v["cpu_pct"]), f"{v['cpu_pct']:.1f} %") for k, v in entries
            if _num(v.get("cpu_pct")) is not None]
    if len(rows) >= 2:
        name = _hbars(out, "idle_cpu.png", "CPU used while waiting on an idle ring", "% of one core", rows)
        md.append(f"\n![idle consumer CPU]({name})\n")
    return "\n".join(md)


def _generic(entries, out: Path) -> str:
    cols = list(dict.fromkeys(c for _, v in entries for c, x in v.items()
                              if c not in ("group", "label", "load", "samples_us") and not isinstance(x, dict | list)
                              and not isinstance(x, np.ndarray)))
    return table(["", *cols, "load"], [[label_of(k, v), *(_fmt(v.get(c)) for c in cols), load_cell(v)]
                                      for k, v in entries])


SECTIONS = {"wake": _wake, "snapshot": _snapshot, "e2e": _e2e, "throughput": _throughput, "scale": _scale,
            "trader": _trader, "orders": _orders, "indicators": _indicators, "backtest": _backtest,
            "idle_cpu": _idle_cpu, "other": _generic}


# -- the report -----------------------------------------------------------------------------------------------------
def _machine(m: dict) -> str:
    def la(x) -> str:
        return " / ".join(f"{v:.2f}" for v in x) + " (1 / 5 / 15 min)" if x else "–"
    cores = str(m.get("cores", "–"))
    if m.get("cores_usable") not in (None, m.get("cores")):
        cores += f" ({m['cores_usable']} usable by this process)"
    rows = [["CPU", m.get("cpu", "–")], ["cores", cores], ["memory", m.get("memory", "–")],
            ["kernel", m.get("kernel", "–")], ["Python", m.get("python", "–")], ["date", m.get("date", "–")],
            ["git commit", m.get("git_commit", "–")], ["load average at start", la(m.get("load_start"))],
            ["load average at end", la(m.get("load_end"))]]
    for when in ("start", "end"):     # bench/stalls.py: what every latency figure sits on
        if m.get(f"stalls_{when}"):
            rows.append([f"stalls at {when} (a spin on each core)", stalls.describe(m[f"stalls_{when}"])])
    libs = m.get("libraries") or {}
    md = table(["machine", ""], rows)
    if libs:
        md += "\n" + table(["library", "version"], [[k, str(v)] for k, v in libs.items()])
    return md


def write(results: dict, machine: dict, out: Path) -> Path:
    """Write ``out/report.md`` and its PNGs from the benchmarks' ``results`` and the ``machine`` they ran on;
    returns the markdown file's path. Groups with no entry are left out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[tuple[str, dict]]] = {}
    for k, v in results.items():
        if isinstance(v, dict):
            groups.setdefault(group_of(k, v), []).append((k, v))
    order = [g for g in GROUPS if g in groups] + [g for g in groups if g not in GROUPS]
    md = ["# SMTM-NG benchmark report\n",
          f"Written by the benchmarks (`make bench`, or `pytest bench --bench-report DIR`) on "
          f"{machine.get('date', '–')}. "
          "The machine is shared: compare figures within one run, and read each with the load beside it.\n",
          "## Machine\n", _machine(machine), "", LOAD_NOTE, ""]
    with matplotlib.rc_context(RC):
        for g in order:
            md.append(f"## {GROUPS.get(g, g)}\n")
            if g == "monitor":
                md.append(_monitor(groups[g], out, groups.get("e2e", [])))
            else:
                md.append(SECTIONS.get(g, _generic)(groups[g], out))
            if g == "e2e" and "monitor" not in groups:
                md.append(_monitor_on_off(groups[g]))
            md.append("")
    path = out / "report.md"
    path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report DIR``: the report again from ``DIR/results.json`` and ``DIR/machine.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report DIR (holding results.json and machine.json)", file=sys.stderr)
        return 2
    d = Path(args[0])
    results = json.loads((d / "results.json").read_text())
    machine = json.loads((d / "machine.json").read_text()) if (d / "machine.json").is_file() else {}
    print(write(results, machine, d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
