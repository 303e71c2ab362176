"""``smtm`` — start, stop and look into an SMTM-NG instance.

    smtm up [--profile replay|live]   start supervisord and every program, wait until RUNNING
    smtm down                         stop supervisord, unlink the instance's shared memory
    smtm status                       programs (state, pid, uptime), heartbeats, counters, rings
    smtm tail MARKET [--tf 30m] [-n 10]  latest candles with EMA, RSI, MACD, Bollinger, from shared memory
    smtm signals                      the buyable set (markets whose buy signal is on)
    smtm universe set KRW-BTC,KRW-ETH | show   the market universe (ingest resubscribes)
    smtm replay status | speed X | pause | resume   the replay exchange's clock
    smtm fault TYPE [--count N] [--seconds S]      inject a fault into the replay exchange

The supervisord configuration is ``supervisord.conf`` at the repository root (``--conf``
names another). Supervision itself is supervisord's (XML-RPC over its Unix socket);
this tool only starts it with the right environment and reads state.
"""
from __future__ import annotations

import argparse
import configparser
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from render.text import format_krw
from shm.ring import SeqlockTimeout
from shm.segment import LayoutMismatch, SegmentNotFound, SegmentNotReady, unlink_instance
from shm.status import PROCESSES, State, StatusTable
from shm.tables import CLOSED, BACKFILLED, GAP, open_candles, open_indicators

from .config import ROOT, Config, ConfigError, load_config

DEFAULT_CONF = ROOT / "supervisord.conf"


class Supervisor:
    """Paths and XML-RPC access of one supervisord configuration file."""

    def __init__(self, conf: Path):
        self.conf = Path(conf).resolve()
        cp = configparser.RawConfigParser()
        cp.read(self.conf)
        here = str(self.conf.parent)
        url = cp.get("supervisorctl", "serverurl").replace("%(here)s", here)
        if not url.startswith("unix://"):
            raise SystemExit(f"{self.conf}: [supervisorctl] serverurl must be unix:// (got {url})")
        self.socket = url[len("unix://"):]
        self.logdir = Path(cp.get("supervisord", "childlogdir").replace("%(here)s", here))
        if len(self.socket.encode()) > 100:
            raise SystemExit(f"supervisord socket path is {len(self.socket)} bytes (Unix sockets allow ~107): "
                             f"{self.socket}; clone the repository to a shorter path")

    def rpc(self):
        """A fresh proxy each call: supervisor's transport is unusable after one failed call."""
        from supervisor.xmlrpc import SupervisorTransport
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{self.socket}"))

    def running(self) -> bool:
        try:
            return self.rpc().supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Fault):
            return False

    def processes(self) -> list[dict]:
        return self.rpc().supervisor.getAllProcessInfo()


def _env(cfg: Config) -> dict:
    env = dict(os.environ)
    env.update(SMTM_PROFILE=cfg.profile, SMTM_INSTANCE=cfg.instance,
               SMTM_REPLAY="true" if cfg.exchange.enabled else "false")
    return env


def cmd_up(args, cfg: Config, sup: Supervisor) -> int:
    sup.logdir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if sup.running():
        print(f"supervisord is already running ({sup.socket}); `smtm down` first to change profile.")
    else:
        exe = Path(sys.executable).parent / "supervisord"
        cmd = [str(exe) if exe.exists() else "supervisord", "-c", str(sup.conf)]
        r = subprocess.run(cmd, env=_env(cfg), capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout + r.stderr, file=sys.stderr)
            return 1
        (ROOT / "run" / "profile").write_text(cfg.profile + "\n")
        print(f"supervisord started (profile {cfg.profile}, instance {cfg.instance})")
    deadline = time.monotonic() + args.timeout
    expected = [p for p in ("exchange", "ingest", "indicator", "symbols", "monitor") if p != "exchange" or cfg.exchange.enabled]
    states: dict = {}
    while time.monotonic() < deadline:
        try:
            states = {p["name"]: p["statename"] for p in sup.processes()}
        except (OSError, xmlrpc.client.Fault):
            states = {}
        if states and all(states.get(p) == "RUNNING" for p in expected):
            break
        if any(states.get(p) in ("FATAL", "BACKOFF") for p in expected):
            time.sleep(0.5)
        time.sleep(0.25)
    cmd_status(args, cfg, sup)
    bad = [p for p in expected if states.get(p) != "RUNNING"]
    if bad:
        print(f"\nnot RUNNING after {args.timeout:.0f} s: {', '.join(bad)} — see {sup.logdir}/<name>.log", file=sys.stderr)
        return 1
    if os.environ.get("DISPLAY") and os.environ.get("SMTM_MONITOR_OFFSCREEN") != "1":
        print(f"\nmonitor: a window on display {os.environ['DISPLAY']}")
    else:
        print(f"\nmonitor: no display, rendering off-screen; snapshot every "
              f"{cfg.monitor.snapshot_interval_s:g} s at {cfg.run_dir / 'monitor.png'}")
    print(f"programs: supervisorctl -c {sup.conf} status   |   candles: smtm tail KRW-BTC")
    return 0


def cmd_down(args, cfg: Config, sup: Supervisor) -> int:
    if sup.running():
        pid = None
        try:
            pid = sup.rpc().supervisor.getPID()
            sup.rpc().supervisor.shutdown()
        except (OSError, xmlrpc.client.Fault) as e:
            print(f"shutdown request failed: {e}", file=sys.stderr)
        deadline = time.monotonic() + args.timeout
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        print("supervisord stopped")
    else:
        print("supervisord was not running")
    removed = unlink_instance(cfg.instance)
    print(f"unlinked {len(removed)} shared-memory objects of instance {cfg.instance!r}"
          + (": " + ", ".join(removed) if removed else ""))
    return 0


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
        st = StatusTable.open(cfg.instance)
        rows = st.read_all()
    except (SegmentNotFound, SegmentNotReady, LayoutMismatch):
        rows = {}
    print(f"\n{'program':<10} {'supervisor':<10} {'pid':>7} {'uptime':>8}  {'state':<12} {'heartbeat':>9} "
          f"{'in':>9} {'out':>9} {'dropped':>7} {'errors':>6} {'reconn':>6}  detail")
    for name in PROCESSES:
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
    try:
        from shm.symbols import TRADABLE, SymbolsTable
        srows, ver = SymbolsTable.open(cfg.instance, cfg.shm.rows).read()
        top = sorted((r for r in srows if r["flags"] & TRADABLE), key=lambda r: int(r["rank"]))
        print(f"\ntop {len(top)} by 24 h traded value (symbols version {ver}): " + ", ".join(
            f"{bytes(r['code']).decode()} #{int(r['rank'])} {float(r['value_24h']) / 1e8:,.0f}e8 KRW" for r in top))
    except (SegmentNotFound, SegmentNotReady, LayoutMismatch):
        pass
    print(f"\n{'ring':<16} {'rows':>4} {'candles':>9} {'global seq':>10}   {'ring':<18} {'records':>9}")
    for tf in cfg.ingest.timeframes:
        cells = []
        for opener in (open_candles, open_indicators):
            try:
                t = opener(cfg.instance, tf, cfg.shm.rows, cfg.shm.capacity)
                names = [n for n in t.names() if n]
                cells.append((t.table, len(names), int(t.counts().sum()), t.global_seq))
                t.close()
            except (SegmentNotFound, SegmentNotReady):
                cells.append((f"{'candles' if opener is open_candles else 'indicators'}.{tf}", 0, 0, "absent"))
            except LayoutMismatch:
                cells.append((f"{tf}", 0, 0, "LAYOUT MISMATCH"))
        (a, an, ac, ag), (b, _, bc, _) = cells
        print(f"{a:<16} {an:>4} {ac:>9} {ag!s:>10}   {b:<18} {bc:>9}")
    return 0


def _flags(f: int) -> str:
    return "".join(c for bit, c in ((CLOSED, "C"), (BACKFILLED, "B"), (GAP, "G")) if f & bit) or "open"


def cmd_tail(args, cfg: Config, sup: Supervisor) -> int:
    tf = args.tf or cfg.monitor.timeframe
    if tf not in cfg.ingest.timeframes:
        print(f"--tf {tf}: this profile's timeframes are {', '.join(cfg.ingest.timeframes)}", file=sys.stderr)
        return 2
    try:
        cand = open_candles(cfg.instance, tf, cfg.shm.rows, cfg.shm.capacity)
    except (SegmentNotFound, SegmentNotReady) as e:
        print(f"{e}\nIs the instance up? (`smtm up`)", file=sys.stderr)
        return 1
    market = args.market.upper()
    row = cand.row_of(market)
    if row is None:
        print(f"{market} has no candles in instance {cfg.instance!r}; markets: "
              f"{', '.join(n for n in cand.names() if n)}", file=sys.stderr)
        return 1
    recs, cnt = cand.read_last(row, args.n)
    first = cnt - len(recs)
    cols = ("ema_fast", "ema_slow", "rsi", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_mid", "bb_lower")
    ind_vals = {k: np.full(len(recs), np.nan) for k in cols}
    try:
        ind = open_indicators(cfg.instance, tf, cfg.shm.rows, cfg.shm.capacity)
        irow = ind.row_of(market)
        if irow is not None:
            irecs, _ = ind.read_range(irow, first, cnt)
            k = len(irecs)
            ok = irecs["t"] == recs["t"][:k]
            for c in cols:
                ind_vals[c][:k] = np.where(ok, irecs[c], np.nan)
    except (SegmentNotFound, SegmentNotReady, SeqlockTimeout):
        pass
    ic = cfg.indicator
    print(f"{market} {tf}  ({cnt} candles written, instance {cfg.instance})")
    print(f"{'start (UTC)':<17} {'open':>13} {'high':>13} {'low':>13} {'close':>13} {'volume':>15} {'trades':>6} "
          f"{'EMA' + str(ic.ema_fast):>13} {'EMA' + str(ic.ema_slow):>13} {'RSI' + str(ic.rsi_period):>6} "
          f"{'MACD':>10} {'signal':>10} {'hist':>9} {'BB upper':>13} {'BB lower':>13}  flags")
    for i, r in enumerate(recs):
        v = {c: float(ind_vals[c][i]) for c in cols}
        when = datetime.fromtimestamp(int(r["t"]), timezone.utc).strftime("%Y-%m-%d %H:%M")
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
    from shm.signals import SignalsTable
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
        since = datetime.fromtimestamp(int(r["since_t"]), timezone.utc).strftime("%Y-%m-%d %H:%M")
        print(f"  {bytes(r['code']).decode():<12} {since:<26} {format_krw(float(r['price'])):>14}  "
              f"{bytes(r['rule']).decode()}")
    return 0


def cmd_universe(args, cfg: Config, sup: Supervisor) -> int:
    from shm.symbols import IN_UNIVERSE, SymbolsTable
    if args.action == "set":
        codes = [c.strip().upper() for c in args.codes.split(",") if c.strip()]
        bad = [c for c in codes if not c.startswith("KRW-") or len(c) > 16]
        if not codes or bad:
            print(f"universe set: expected comma-separated KRW market codes, bad: {bad or 'none given'}", file=sys.stderr)
            return 2
        t = SymbolsTable.writer(cfg.instance, cfg.shm.rows)
        ver = t.write([(c, IN_UNIVERSE, 0, 0.0) for c in dict.fromkeys(codes)])
        print(f"universe version {ver}: {', '.join(dict.fromkeys(codes))}")
        return 0
    try:
        t = SymbolsTable.open(cfg.instance, cfg.shm.rows)
    except (SegmentNotFound, SegmentNotReady):
        print(f"no symbols table yet: the universe is markets.codes = {', '.join(cfg.markets)}")
        return 0
    rows, ver = t.read()
    print(f"universe version {ver}")
    for r in rows:
        print(f"  {bytes(r['code']).decode():<16} flags={int(r['flags'])} rank={int(r['rank'])}")
    return 0


def _admin(cfg: Config, method: str, path: str, body: dict | None = None):
    import requests
    url = f"http://{cfg.exchange.host}:{cfg.exchange.port}{path}"
    try:
        r = requests.request(method, url, json=body, timeout=5)
    except requests.RequestException as e:
        raise SystemExit(f"replay exchange not reachable at {url}: {e}")
    doc = r.json()
    if r.status_code >= 400:
        raise SystemExit(f"{url}: {doc.get('error', doc)}")
    return doc


def _progress_line(p: dict) -> str:
    state = "finished" if p["finished"] else "paused" if p["paused"] else "running" if p["started"] else "waiting for a subscriber"
    return (f"replay {state}: {p['replay_time']}  {p['percent']:.1f}% ({p['position']:,}/{p['trades']:,} trades)  "
            f"speed x{p['speed']:g}{' (as fast as consumers keep up)' if p['speed'] == 0 else ''}  clients {p['clients']}")


def cmd_replay(args, cfg: Config, sup: Supervisor) -> int:
    if args.action == "status":
        print(_progress_line(_admin(cfg, "GET", "/replay/status")))
        return 0
    if args.action == "speed":
        if args.value is None:
            print("replay speed: give a number (replay seconds per wall second; 0 = as fast as possible)", file=sys.stderr)
            return 2
        body = {"speed": args.value}
    else:
        body = {args.action: True}
    print(_progress_line(_admin(cfg, "POST", "/replay/control", body)))
    return 0


def cmd_fault(args, cfg: Config, sup: Supervisor) -> int:
    body = {"type": args.type, "count": args.count, "seconds": args.seconds}
    state = _admin(cfg, "POST", "/faults", body)
    print(f"fault {args.type} injected; now: " + ", ".join(f"{k}={v}" for k, v in state.items() if k != "applied"))
    return 0


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `smtm status | head` must not trace back
    ap = argparse.ArgumentParser(prog="smtm", description="SMTM-NG: start, stop and inspect an instance")
    ap.add_argument("--conf", type=Path, default=DEFAULT_CONF, help="supervisord configuration (default: %(default)s)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start supervisord and every program")
    up.add_argument("--profile", choices=("replay", "live"), default=None)
    up.add_argument("--timeout", type=float, default=45.0, help="seconds to wait for RUNNING")
    down = sub.add_parser("down", help="stop everything and unlink the instance's shared memory")
    down.add_argument("--timeout", type=float, default=20.0)
    sub.add_parser("status", help="programs, heartbeats, counters and rings")
    tail = sub.add_parser("tail", help="latest candles with their EMAs, from shared memory")
    tail.add_argument("market", help="market code, e.g. KRW-BTC")
    tail.add_argument("--tf", help="timeframe (default: monitor.timeframe)")
    tail.add_argument("-n", type=int, default=10, help="candles (default 10)")
    sub.add_parser("signals", help="the buyable set: markets whose buy signal is on")
    uni = sub.add_parser("universe", help="set or show the market universe (the symbols table)")
    uni.add_argument("action", choices=("set", "show"))
    uni.add_argument("codes", nargs="?", default="", help="comma-separated market codes (set)")
    rp = sub.add_parser("replay", help="replay exchange: status, speed X, pause, resume")
    rp.add_argument("action", choices=("status", "speed", "pause", "resume"))
    rp.add_argument("value", nargs="?", type=float, help="speed: replay seconds per wall second (0 = max)")
    fl = sub.add_parser("fault", help="inject a fault into the replay exchange")
    from .faults import FAULT_TYPES
    fl.add_argument("type", choices=FAULT_TYPES)
    fl.add_argument("--count", type=int, default=1, help="frames/trades/requests affected (default 1)")
    fl.add_argument("--seconds", type=float, default=0.0, help="duration (stall, rest_418, rest_slow, drop outage)")
    args = ap.parse_args(argv)
    profile_file = ROOT / "run" / "profile"
    profile = getattr(args, "profile", None) or os.environ.get("SMTM_PROFILE")
    if profile is None and profile_file.exists():
        profile = profile_file.read_text().strip() or None  # the profile `smtm up` started
    try:
        cfg = load_config(profile)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    sup = Supervisor(args.conf)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "tail": cmd_tail, "signals": cmd_signals, "universe": cmd_universe,
            "replay": cmd_replay, "fault": cmd_fault}[args.cmd](args, cfg, sup)


if __name__ == "__main__":
    raise SystemExit(main())
