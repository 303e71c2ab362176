"""``smtm`` — start, stop and look into an SMTM-NG instance (``SMTM_INSTANCE``, default ``default``).

    smtm up [--profile replay|live] [--broker paper|upbit]   start the instance's supervisord and every
                                      program, wait until RUNNING (--broker upbit on replay: the Upbit broker
                                      against the replay exchange's exchange API, with its replay-only keys)
    smtm down                         stop it, unlink the instance's shared memory
    smtm ctl [ARGS...]                supervisorctl of this instance (status, stop monitor, start monitor, ...)
    smtm status                       programs (state, pid, uptime), heartbeats, counters, top N, rings
    smtm tail MARKET [--tf 30m] [-n 10]  latest candles with EMA, RSI, MACD, Bollinger, from shared memory
    smtm signals                      the buyable set (markets whose buy signal is on)
    smtm universe set KRW-BTC,KRW-ETH | show   the market universe (ingest resubscribes)
    smtm replay status | speed X | pause | resume   the replay exchange's clock
    smtm backtest [--preset P] [--set K=V] [--markets A,B] [--from D] [--to D] [--data DIR] [--timeframe TF]
                                      the trader's engine over recorded data in one process (no instance needed)
    smtm fault TYPE [--count N] [--seconds S]      inject a fault into the replay exchange (market data,
                                                   REST, or orders: order_hold, order_drop, order_500, ...)

The trader, over its command socket (``run/<instance>/trader.sock``; exit 1 when refused or not running):

    smtm arm | disarm [--reason TEXT]      allow / stop new entries (LIVE.ARM / LIVE.DISARM)
    smtm kill [--reset] [--flatten] [--reason TEXT]   kill switch: cancel open orders, block new ones
                                           (--flatten: then sell every position; KILL.RESET leaves it)
    smtm exit MARKET|all [--reason TEXT]   sell a position (or all) at market
    smtm preset SAFE|BALANCED|AGGRESSIVE   apply a strategy preset (refused while ARMED)
    smtm positions | orders [-n N] | pnl [--by day|market|exit-reason] | timeline [-n N]
    smtm snapshot [MARKET]                 the full state as JSON
    smtm events [--types PREFIXES] [-n N]  one line per event until Ctrl-C

Supervision itself is supervisord's (``supervisord.conf`` at the repository root; ``--conf``
names another): this tool starts it with the instance's environment and reads state.
Modules: :mod:`.supervisor` (up/down/ctl), :mod:`.inspect` (shared-memory inspection),
:mod:`.replay_admin` (the replay exchange's admin routes), :mod:`.trader` (the trader's command socket).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..runtime.config import ROOT, ConfigError
from ..runtime.loader import load_config
from .backtest import add_parser as add_backtest_parser
from .backtest import cmd_backtest
from .inspect import cmd_signals, cmd_status, cmd_tail, cmd_universe
from .replay_admin import cmd_fault, cmd_replay
from .supervisor import Supervisor, cmd_ctl, cmd_down, cmd_up
from .trader import TRADER_COMMANDS, add_parsers

DEFAULT_CONF = ROOT / "supervisord.conf"
COMMANDS = {"up": cmd_up, "down": cmd_down, "ctl": cmd_ctl, "status": cmd_status, "tail": cmd_tail,
            "signals": cmd_signals, "universe": cmd_universe, "replay": cmd_replay, "fault": cmd_fault,
            "backtest": cmd_backtest, **TRADER_COMMANDS}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="smtm", description="SMTM-NG: start, stop and inspect an instance "
                                                          "(SMTM_INSTANCE, default 'default')")
    ap.add_argument("--conf", type=Path, default=DEFAULT_CONF, help="supervisord configuration (default: %(default)s)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start supervisord and every program")
    up.add_argument("--profile", choices=("replay", "live"), default=None)
    up.add_argument("--broker", choices=("paper", "upbit"), default=None,
                    help="the trader's broker (default: trader.broker of the profile)")
    up.add_argument("--timeout", type=float, default=45.0, help="seconds to wait for RUNNING")
    down = sub.add_parser("down", help="stop everything and unlink the instance's shared memory")
    down.add_argument("--timeout", type=float, default=20.0)
    ctl = sub.add_parser("ctl", help="supervisorctl of this instance, e.g. `smtm ctl stop monitor`")
    ctl.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("status", help="programs, heartbeats, counters and rings")
    tail = sub.add_parser("tail", help="latest candles with their indicators, from shared memory")
    tail.add_argument("market", help="market code, e.g. KRW-BTC")
    tail.add_argument("--tf", help="timeframe (default: monitor.timeframe)")
    tail.add_argument("-n", type=int, default=10, help="candles (default 10)")
    sub.add_parser("signals", help="the buyable set: markets whose buy signal is on")
    uni = sub.add_parser("universe", help="set or show the market universe (the symbols table)")
    uni.add_argument("action", choices=("set", "show"))
    uni.add_argument("codes", nargs="?", default="", help="comma-separated market codes (set)")
    rp = sub.add_parser("replay", help="replay exchange: status, speed X, rate R, pause, resume")
    rp.add_argument("action", choices=("status", "speed", "rate", "pause", "resume"))
    rp.add_argument("value", nargs="?", type=float, help="speed: replay seconds per wall second (0 = max); rate: "
                                                         "trades per second, market time at wall time (0 = off)")
    fl = sub.add_parser("fault", help="inject a fault into the replay exchange (it lists the types it knows)")
    fl.add_argument("type", help="drop, stall, malformed, duplicate, reorder, rest_429, rest_418, rest_slow; orders: "
                                 "order_hold, order_drop, order_500, order_slow, order_429, order_reject, "
                                 "order_partial, fill_duplicate; clear")
    fl.add_argument("--count", type=int, default=1, help="frames/trades/requests affected (default 1)")
    fl.add_argument("--seconds", type=float, default=0.0,
                    help="duration (stall, rest_418, rest_slow, drop outage, order_hold, order_slow, order_partial)")
    add_parsers(sub)
    add_backtest_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `smtm status | head` must not trace back
    args = _parser().parse_args(argv)
    instance = os.environ.get("SMTM_INSTANCE") or "default"
    run_base = Path(os.environ.get("SMTM_RUN_DIR", ROOT / "run"))
    profile = getattr(args, "profile", None) or os.environ.get("SMTM_PROFILE")
    profile_file = run_base / instance / "profile"
    if profile is None and profile_file.exists():
        profile = profile_file.read_text().strip() or None  # the profile `smtm up` started
    if getattr(args, "broker", None):
        os.environ["SMTM_BROKER"] = args.broker    # the loader applies it; supervisord passes it on
    try:
        cfg = load_config(profile)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    return COMMANDS[args.cmd](args, cfg, Supervisor(args.conf, cfg.instance))
