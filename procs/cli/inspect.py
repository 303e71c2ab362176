"""``smtm status`` / ``tail`` / ``signals`` / ``universe``: shared-memory inspection (read-only,
except ``universe set``, which writes the ``symbols`` table when no symbols process does)."""
from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import numpy as np

from render.text import format_krw
from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady
from shm.seqlock import SeqlockTimeout
from shm.signals import SignalsTable
from shm.status import State, StatusTable
from shm.symbols import IN_UNIVERSE, TRADABLE, SymbolsTable
from shm.tables import BACKFILLED, CANDLES, CLOSED, GAP, INDICATORS, RINGS, aligned_indicators
from shm.trading import MODE_NAMES, RISK_FLAG_NAMES, TraderTable, text

from ..runtime.config import Config
from ..runtime.roster import STATUS_ROWS
from .supervisor import Supervisor


def _age(ns: int) -> str:
    s = (time.monotonic_ns() - ns) / 1e9
    return f"{s:.1f}s" if s < 100 else f"{s:.0f}s"


def cmd_status(args, cfg: Config, sup: Supervisor) -> int:
    print(f"instance {cfg.instance}  profile {cfg.profile}")
    procs = {}
    if sup.running():
        procs = {p["name"]: p for p in sup.processes()}
    else:
        print("supervisord: not running")
    try:
        st = StatusTable.open(cfg.instance, STATUS_ROWS)
        rows = st.read_all()
    except (SegmentNotFound, SegmentNotReady, LayoutMismatch):
        rows = {}
    print(f"\n{'program':<10} {'supervisor':<10} {'pid':>7} {'uptime':>8}  {'state':<12} {'heartbeat':>9} "
          f"{'in':>9} {'out':>9} {'dropped':>7} {'errors':>6} {'reconn':>6}  detail")
    for name in STATUS_ROWS:
        p = procs.get(name, {})
        r = rows.get(name)
        up = ""
        if p.get("statename") == "RUNNING":
            up = f"{p['now'] - p['start']}s"
        if r is not None and int(r["pid"]):
            hb = _age(int(r["heartbeat_ns"])) if r["state"] != State.STOPPED else "-"
            line = (f"{State(int(r['state'])).name:<12} {hb:>9} {int(r['msgs_in']):>9} {int(r['msgs_out']):>9} "
                    f"{int(r['dropped']):>7} {int(r['errors']):>6} {int(r['reconnects']):>6}  "
                    f"{bytes(r['detail']).decode(errors='replace')}")
        else:
            line = f"{'-':<12} {'-':>9}"
        print(f"{name:<10} {p.get('statename', '-'):<10} {p.get('pid', 0) or '-':>7} {up:>8}  {line}")
    print(f"\n{engine_line(cfg)}")
    try:
        srows, ver = SymbolsTable.open(cfg.instance, cfg.shm.rows).read()
        top = sorted((r for r in srows if r["flags"] & TRADABLE), key=lambda r: int(r["rank"]))
        print(f"\ntop {len(top)} by 24 h traded value (symbols version {ver}): " + ", ".join(
            f"{bytes(r['code']).decode()} #{int(r['rank'])} {float(r['value_24h']) / 1e8:,.0f}e8 KRW" for r in top))
    except (SegmentNotFound, SegmentNotReady, LayoutMismatch):
        pass
    _print_rings(cfg)
    return 0


def engine_line(cfg: Config) -> str:
    """``engine: ARMED  preset BALANCED v3  equity 10,123,456 KRW  daily -12,345  drawdown 0.4 %`` from the
    ``trader`` table (risk flags and the last mode change / risk trip follow when set), or
    ``engine: not running``."""
    try:
        t = TraderTable.open(cfg.instance, 1)
    except (SegmentNotFound, SegmentNotReady):
        return "engine: not running"
    except LayoutMismatch:
        return "engine: LAYOUT MISMATCH (the trader table was written by another version)"
    try:
        r = t.state()
    except SeqlockTimeout:
        return "engine: trader table busy (seqlock timeout)"
    finally:
        t.close()
    line = (f"engine: {MODE_NAMES.get(int(r['mode']), '?')}  preset {text(r['preset'])} v{int(r['config_version'])}"
            f"  equity {float(r['equity']):,.0f} KRW  daily {float(r['daily_pnl']):,.0f}  drawdown "
            f"{float(r['drawdown_pct']):.1f} %")
    flags = [n for bit, n in RISK_FLAG_NAMES.items() if int(r["risk_flags"]) & bit]
    if flags:
        line += f"  risk {','.join(flags)}"
    reason = text(r["reason"])
    return line + (f"  ({reason})" if reason else "")


def _print_rings(cfg: Config) -> None:
    print(f"\n{'ring':<16} {'rows':>4} {'records':>9} {'global seq':>10}   writer")
    for spec in RINGS:
        for tf in cfg.shm.timeframes:
            try:
                t = spec.open(cfg.instance, tf, cfg.shm.rows, cfg.shm.capacity)
                names = [n for n in t.names() if n]
                cell = (len(names), int(t.counts().sum()), t.global_seq)
                t.close()
            except (SegmentNotFound, SegmentNotReady):
                cell = (0, 0, "absent")
            except LayoutMismatch:
                cell = (0, 0, "LAYOUT MISMATCH")
            print(f"{spec.table(tf):<16} {cell[0]:>4} {cell[1]:>9} {cell[2]!s:>10}   {spec.writer}")


def _flags(f: int) -> str:
    return "".join(c for bit, c in ((CLOSED, "C"), (BACKFILLED, "B"), (GAP, "G")) if f & bit) or "open"


def cmd_tail(args, cfg: Config, sup: Supervisor) -> int:
    tf = args.tf or cfg.monitor.timeframe
    if tf not in cfg.shm.timeframes:
        print(f"--tf {tf}: this profile's timeframes are {', '.join(cfg.shm.timeframes)}", file=sys.stderr)
        return 2
    try:
        cand = CANDLES.open(cfg.instance, tf, cfg.shm.rows, cfg.shm.capacity)
    except (SegmentNotFound, SegmentNotReady) as e:
        print(f"{e}\nIs the instance up? (`smtm up`)", file=sys.stderr)
        return 1
    market = args.market.upper()
    got = cand.read_last_of(market, args.n)
    if got is None:
        print(f"{market} has no candles in instance {cfg.instance!r}; markets: "
              f"{', '.join(n for n in cand.names() if n)}", file=sys.stderr)
        return 1
    recs, cnt = got
    cols = ("ema_fast", "ema_slow", "rsi", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_mid", "bb_lower")
    try:
        ind = INDICATORS.open(cfg.instance, tf, cfg.shm.rows, cfg.shm.capacity)
        ind_vals = aligned_indicators(ind, market, recs, cnt, cols)
    except (SegmentNotFound, SegmentNotReady, SeqlockTimeout):
        ind_vals = {k: np.full(len(recs), np.nan) for k in cols}  # the candles alone, then
    ic = cfg.indicator
    print(f"{market} {tf}  ({cnt} candles written, instance {cfg.instance})")
    print(f"{'start (UTC)':<17} {'open':>13} {'high':>13} {'low':>13} {'close':>13} {'volume':>15} {'trades':>6} "
          f"{'EMA' + str(ic.ema_fast):>13} {'EMA' + str(ic.ema_slow):>13} {'RSI' + str(ic.rsi_period):>6} "
          f"{'MACD':>10} {'signal':>10} {'hist':>9} {'BB upper':>13} {'BB lower':>13}  flags")
    for i, r in enumerate(recs):
        v = {c: float(ind_vals[c][i]) for c in cols}
        when = datetime.fromtimestamp(int(r["t"]), UTC).strftime("%Y-%m-%d %H:%M")
        rsi = "-" if v["rsi"] != v["rsi"] else f"{v['rsi']:.1f}"
        print(f"{when:<17} {format_krw(r['o']):>13} {format_krw(r['h']):>13} {format_krw(r['l']):>13} "
              f"{format_krw(r['c']):>13} {float(r['v']):>15.4f} {int(r['n']):>6} {format_krw(v['ema_fast']):>13} "
              f"{format_krw(v['ema_slow']):>13} {rsi:>6} {_signed(v['macd']):>10} {_signed(v['macd_signal']):>10} "
              f"{_signed(v['macd_hist']):>9} {format_krw(v['bb_upper']):>13} {format_krw(v['bb_lower']):>13}  "
              f"{_flags(int(r['flags']))}")
    return 0


def _signed(x: float) -> str:
    """MACD values: signed, plain KRW (they can be tiny for low-priced markets)."""
    if x != x:
        return "-"
    return ("-" if x < 0 else "") + format_krw(abs(x))


def cmd_signals(args, cfg: Config, sup: Supervisor) -> int:
    try:
        t = SignalsTable.open(cfg.instance, cfg.shm.rows)
    except (SegmentNotFound, SegmentNotReady):
        print("no signals table yet (is the indicator running?)", file=sys.stderr)
        return 1
    rows, ver = t.read_all()
    rows = rows[rows["code"] != b""]
    on = rows[rows["active"] == 1]
    rules = ", ".join(cfg.signals.rules)
    print(f"buyable set on {cfg.signal_timeframe} candles ({len(on)} of {len(rows)} markets; rules: {rules}; "
          f"version {ver})")
    if len(on):
        print(f"  {'market':<12} {'since (UTC, candle start)':<26} {'price':>14}  rule")
    for r in on:
        since = datetime.fromtimestamp(int(r["since_t"]), UTC).strftime("%Y-%m-%d %H:%M")
        print(f"  {bytes(r['code']).decode():<12} {since:<26} {format_krw(float(r['price'])):>14}  "
              f"{bytes(r['rule']).decode()}")
    return 0


def cmd_universe(args, cfg: Config, sup: Supervisor) -> int:
    if args.action == "set":
        codes = [c.strip().upper() for c in args.codes.split(",") if c.strip()]
        bad = [c for c in codes if not c.startswith("KRW-") or len(c) > 16]
        if not codes or bad:
            print(f"universe set: expected comma-separated KRW market codes, bad: {bad or 'none given'}",
                  file=sys.stderr)
            return 2
        codes = list(dict.fromkeys(codes))
        if len(codes) > cfg.shm.rows:
            print(f"universe set: {len(codes)} markets do not fit in the tables' {cfg.shm.rows} rows (shm.rows)",
                  file=sys.stderr)
            return 2
        t = SymbolsTable.writer(cfg.instance, cfg.shm.rows)
        ver = t.write([(c, IN_UNIVERSE, 0, 0.0) for c in codes])
        print(f"universe version {ver}: {', '.join(dict.fromkeys(codes))}")
        return 0
    try:
        t = SymbolsTable.open(cfg.instance, cfg.shm.rows)
    except (SegmentNotFound, SegmentNotReady):
        print(f"no symbols table yet: the universe is markets.codes = {', '.join(cfg.markets.codes)}")
        return 0
    rows, ver = t.read()
    print(f"universe version {ver}")
    for r in rows:
        print(f"  {bytes(r['code']).decode():<16} flags={int(r['flags'])} rank={int(r['rank'])}")
    return 0
