"""``smtm arm | disarm | kill | positions | orders | pnl | timeline | snapshot | events | preset | exit``:
commands to the running trader over its socket (``run/<instance>/trader.sock``, :mod:`procs.trading.client`).

Exit status: 0 done; 1 the trader refused (its ``code: message`` on stderr) or is not running; 2 usage.
Money in KRW with thousands separators, times in UTC (``YYYY-MM-DD HH:MM``, market time; ``events``: wall
clock), P&L green/red; ``pnl --by day`` groups by KST day, as the engine's daily limits do.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from render.text import format_krw, format_qty_exact

from ..runtime.config import Config
from ..runtime.presets import PresetName
from ..trading.client import TraderClient, TraderUnavailable
from ..trading.protocol import CommandError
from .supervisor import Supervisor

_FAILED = object()
PNL_BY = {"day": "day", "market": "market", "exit-reason": "exit_reason"}


def socket_path(cfg: Config):
    """The trader's command socket of this instance."""
    return cfg.run_dir / "trader.sock"


def _call(cfg: Config, type: str, payload: dict | None = None, symbol: str | None = None) -> Any:
    """The ACK payload of one command, or _FAILED after saying why on stderr."""
    try:
        with TraderClient(socket_path(cfg)) as t:
            ack = t.request(type, payload, symbol)
    except TraderUnavailable as e:
        print(f"trader of instance {cfg.instance!r}: {e}", file=sys.stderr)
        return _FAILED
    if not ack["ok"]:
        err = ack.get("error") or {}
        print(f"{type} not done: {err.get('code', '?')}: {err.get('message', '')}", file=sys.stderr)
        return _FAILED
    return ack["payload"]


def _console() -> Console:
    """Tables on stdout (resolved at print time); wide when not a terminal, so pipes keep every column."""
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _krw(x) -> str:
    """A KRW amount: ``10,123,456`` (``-`` when unknown)."""
    x = _num(x)
    return "-" if x != x else f"{x:,.0f}"


def _price(x) -> str:
    """A KRW price as :func:`render.text.format_krw` writes it (decimals below 1,000 KRW)."""
    return format_krw(_num(x))


def _qty(x) -> str:
    return format_qty_exact(_num(x))


def _pnl(x, suffix: str = "", fmt: str = "{:+,.0f}") -> Text:
    """A signed amount, green above zero, red below."""
    x = _num(x)
    if x != x:
        return Text("-")
    s = fmt.format(x)
    if not s.strip("+-0.,"):   # rounds to zero: no sign, no colour
        return Text(s.lstrip("+-") + suffix)
    return Text(s + suffix, style="green" if x > 0 else "red")


def _when(ms) -> str:
    """Unix ms → ``YYYY-MM-DD HH:MM`` UTC (``-`` for none)."""
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M") if ms else "-"


def count(s: str) -> int:
    """``-n``: 1 to 1000 (what the trader serves)."""
    if not 1 <= int(s) <= 1000:
        raise argparse.ArgumentTypeError(f"{s} is not in 1..1000")
    return int(s)


def _reason(args) -> dict:
    return {"reason": args.reason} if getattr(args, "reason", None) else {}


# -- mode ---------------------------------------------------------------------------------------------------
MODE_TYPES = {"arm": "LIVE.ARM", "disarm": "LIVE.DISARM", "kill": "KILL.SWITCH"}


def cmd_mode(args, cfg: Config, sup: Supervisor) -> int:
    """``arm`` / ``disarm`` / ``kill [--reset]``: the new mode, and what the kill switch cancelled."""
    payload = _reason(args)
    if getattr(args, "flatten", False):
        payload["flatten"] = True
    p = _call(cfg, "KILL.RESET" if getattr(args, "reset", False) else MODE_TYPES[args.cmd], payload)
    if p is _FAILED:
        return 1
    print(f"mode {p.get('mode', '?')}")
    cancelled = p.get("cancelled")
    if cancelled is not None:
        print(f"cancelled {len(cancelled)} open order(s): {', '.join(cancelled)}" if cancelled
              else "no open order to cancel")
    return 0


def preset_payload(what: str, source: str | None) -> dict:
    """CONFIG.APPLY's payload for ``smtm preset NAME`` or ``smtm preset apply NAME|FILE``: FILE is a backtest's
    directory (its ``params.json``) or such a JSON file; the audit records which backtest it came from.
    Raises ValueError."""
    names = get_args(PresetName)
    if what.lower() != "apply":
        if what.upper() not in names:
            raise ValueError(f"preset {what!r}: allowed are {', '.join(names)}, or apply NAME|FILE")
        return {"preset": what.upper()}
    if not source:
        raise ValueError("preset apply needs a preset name or a backtest's params.json (or its directory)")
    if source.upper() in names:
        return {"preset": source.upper(), "why": "smtm preset apply"}
    path = Path(source)
    path = path / "params.json" if path.is_dir() else path
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable params.json ({e})") from None
    if not isinstance(doc, dict) or doc.get("preset") not in names or not isinstance(doc.get("params", {}), dict):
        raise ValueError(f"{path}: expected {{\"preset\": one of {', '.join(names)}, \"params\": {{...}}}}")
    return {"preset": doc["preset"], "params": doc.get("params", {}),
            "why": f"from backtest {doc.get('backtest', path.parent.name)} ({path})"[:200]}


def cmd_preset(args, cfg: Config, sup: Supervisor) -> int:
    try:
        payload = preset_payload(args.name, args.source)
    except ValueError as e:
        print(f"smtm preset: {e}", file=sys.stderr)
        return 2
    p = _call(cfg, "CONFIG.APPLY", payload)
    if p is _FAILED:
        return 1
    params = p.get("params") or {}
    print(f"preset {p.get('preset')} applied (config version {p.get('config_version')})")
    if params:
        print("  " + "  ".join(f"{k}={v}" for k, v in params.items()))
    return 0


def cmd_exit(args, cfg: Config, sup: Supervisor) -> int:
    market = "all" if args.market.lower() == "all" else args.market.upper()
    limit = {"price": args.limit} if getattr(args, "limit", None) is not None else {}
    p = _call(cfg, "POSITION.EXIT", {"market": market, **limit, **_reason(args)})
    if p is _FAILED:
        return 1
    orders = p.get("orders") or []
    print(f"{len(orders)} exit order(s): {', '.join(orders)}" if orders
          else "no exit order sent (no filled position, or its exit is already working)")
    return 0


# -- state ----------------------------------------------------------------------------------------------------
def cmd_positions(args, cfg: Config, sup: Supervisor) -> int:
    p = _call(cfg, "POSITIONS.GET")
    if p is _FAILED:
        return 1
    rows = p.get("positions") or []
    if not rows:
        print("no open positions")
        return 0
    pending = sum((r.get("state") or "open") == "pending" for r in rows)
    title = f"{len(rows) - pending} open position(s)" + (f", {pending} pending entry" if pending else "")
    t = Table(title=title, title_justify="left")
    for name in ("market", "state", "qty", "avg price", "last", "cost KRW", "TP", "SL", "unrealized KRW", "%",
                 "entry", "opened (UTC)"):
        t.add_column(name, justify="left" if name in ("market", "state", "entry", "opened (UTC)") else "right")
    for r in rows:
        v = r if _num(r.get("qty")) > 0 else {}   # a pending entry holds nothing yet: no price, cost or P&L
        state = (Text("exiting", style="yellow") if r.get("exiting")   # an exit order is working
                 else Text(r.get("state") or "open", style="dim" if r.get("state") == "pending" else ""))
        t.add_row(r.get("market", "?"), state, _qty(v.get("qty")), _price(v.get("avg_price")),
                  _price(r.get("last_price") or None), _krw(v.get("cost")), _price(v.get("tp")), _price(v.get("sl")),
                  _pnl(v.get("unrealized")), _pnl(v.get("unrealized_pct"), " %", "{:+.2f}"), r.get("entry_tag") or "",
                  _when(r.get("opened_ms")))
    con = _console()
    con.print(t)
    total = sum(_num(r.get("unrealized")) for r in rows if _num(r.get("qty")) > 0)
    con.print(Text("unrealized total ").append(_pnl(total, " KRW")))
    return 0


def _size(r: dict) -> str:
    """What the order asked for, as Upbit's ord_type means it: ``price`` spends KRW, ``market`` sells a
    quantity, ``limit`` is a quantity at a price."""
    kind, price, volume = r.get("ord_type"), r.get("price") or None, r.get("volume") or None
    if kind == "price":
        return f"{_krw(price)} KRW"
    return f"{_qty(volume)} @ {_price(price)}" if kind == "limit" else _qty(volume)


def cmd_orders(args, cfg: Config, sup: Supervisor) -> int:
    p = _call(cfg, "ORDERS.GET", {"n": args.n})
    if p is _FAILED:
        return 1
    rows = p.get("orders") or []
    if not rows:
        print("no orders")
        return 0
    t = Table(title=f"{len(rows)} order(s), newest first", title_justify="left")
    for name in ("created (UTC)", "market", "side", "type", "size", "filled", "avg fill", "fee KRW", "state",
                 "reason", "identifier"):
        t.add_column(name, justify="right" if name in ("size", "filled", "avg fill", "fee KRW") else "left")
    for r in rows:
        side = r.get("side", "?")
        t.add_row(_when(r.get("created_ms")), r.get("market", "?"),
                  Text(side, style="green" if side == "bid" else "red" if side == "ask" else ""),
                  r.get("ord_type", ""), _size(r), _qty(r.get("filled")), _price(r.get("avg_fill") or None),
                  _krw(r.get("fee")), r.get("state", ""), r.get("reason") or "", r.get("identifier", ""))
    _console().print(t)
    return 0


def _win_rate(wins, trades) -> str:
    return f"{100.0 * wins / trades:.1f} %" if trades else "-"


def cmd_pnl(args, cfg: Config, sup: Supervisor) -> int:
    by = PNL_BY[args.by] if args.by else None
    p = _call(cfg, "PNL.GET", {"by": by})
    if p is _FAILED:
        return 1
    tot = p.get("totals") or {}
    con = _console()
    trades, wins = int(tot.get("trades") or 0), int(tot.get("wins") or 0)
    con.print(Text(f"equity {_krw(tot.get('equity'))} KRW (started with {_krw(tot.get('starting_cash'))}, return ")
              .append(_pnl(tot.get("return_pct"), " %", "{:+.2f}")).append(")"))
    con.print(Text("realized ").append(_pnl(tot.get("realized"), " KRW")).append("  unrealized ")
              .append(_pnl(tot.get("unrealized"), " KRW")).append(f"  fees {_krw(tot.get('fees'))} KRW (in the P&L)"))
    con.print(f"trades {trades}: {wins} won, {int(tot.get('losses') or 0)} lost, win rate {_win_rate(wins, trades)}")
    rows = p.get("rows") or []
    if by is None:
        return 0
    if not rows:
        print(f"no closed trades to group by {args.by}")
        return 0
    key = "closing day (KST)" if by == "day" else args.by   # the engine's days: daily limits reset at 00:00 KST
    con.print(group_table(f"closed trades by {key}", key, rows))
    return 0


def group_table(title: str, key: str, rows: list[dict]) -> Table:
    """Closed trades per group (rows of :func:`procs.trading.portfolio.group_closed`): trades, wins, win rate,
    realized P&L, fees."""
    t = Table(title=title, title_justify="left")
    for name in (key, "trades", "wins", "win rate", "realized KRW", "fees KRW"):
        t.add_column(name, justify="left" if name == key else "right")
    for r in rows:
        n, w = int(r.get("trades") or 0), int(r.get("wins") or 0)
        t.add_row(str(r.get("key", "?")), str(n), str(w), _win_rate(w, n), _pnl(r.get("realized")),
                  _krw(r.get("fees")))
    return t


_SEVERITY = {"info": "", "warn": "yellow", "alert": "bold red"}


def cmd_timeline(args, cfg: Config, sup: Supervisor) -> int:
    p = _call(cfg, "TIMELINE.GET", {"n": args.n})
    if p is _FAILED:
        return 1
    rows = p.get("timeline") or []
    if not rows:
        print("the timeline is empty")
        return 0
    t = Table(title=f"last {len(rows)} timeline entries, oldest first", title_justify="left")
    for name in ("market time (UTC)", "severity", "kind", "market", "why"):
        t.add_column(name, overflow="fold")
    for r in rows:
        sev = r.get("severity", "info")
        t.add_row(_when(r.get("market_ms")), Text(sev, style=_SEVERITY.get(sev, "")), r.get("kind", ""),
                  r.get("market") or "", r.get("text", ""))
    _console().print(t)
    return 0


def cmd_snapshot(args, cfg: Config, sup: Supervisor) -> int:
    p = _call(cfg, "SNAPSHOT.GET", symbol=args.market.upper() if args.market else None)
    if p is _FAILED:
        return 1
    print(orjson.dumps(p, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    m = p.get("market") if args.market else None
    if isinstance(m, dict) and not m.get("tradable") and m.get("last_price") is None and not p.get("candles"):
        print(f"note: the trader knows nothing of {args.market.upper()} (not tradable, no price, no candles)",
              file=sys.stderr)
    return 0


def _event_line(ev: dict) -> str:
    ts = ev.get("ts")
    when = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if isinstance(ts, int | float) else "-"
    return (f"{when} #{ev.get('seq', '?'):<6} {ev.get('type', '?'):<22} {ev.get('symbol') or '-':<10} "
            f"{orjson.dumps(ev.get('payload')).decode()}")


def cmd_events(args, cfg: Config, sup: Supervisor) -> int:
    types = [t.strip() for t in args.types.split(",") if t.strip()] if args.types else None
    seen = 0
    try:
        with TraderClient(socket_path(cfg)) as t:
            stream = t.events(types)
            print(f"subscribed to {', '.join(types) if types else 'every event'} (times: when sent, wall clock UTC; "
                  f"Ctrl-C to stop)", file=sys.stderr)
            for ev in stream:
                print(_event_line(ev), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    return 0
    except KeyboardInterrupt:
        return 0
    except CommandError as e:
        print(f"EVENT.SUBSCRIBE not done: {e.code}: {e.message}", file=sys.stderr)
    except TraderUnavailable as e:
        print(f"trader of instance {cfg.instance!r}: {e}", file=sys.stderr)
    return 1


TRADER_COMMANDS = {"arm": cmd_mode, "disarm": cmd_mode, "kill": cmd_mode, "positions": cmd_positions,
                   "orders": cmd_orders, "pnl": cmd_pnl, "timeline": cmd_timeline, "snapshot": cmd_snapshot,
                   "events": cmd_events, "preset": cmd_preset, "exit": cmd_exit}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the trader's subcommands on ``smtm``'s subparsers."""
    def reasoned(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--reason", help="why (goes into the trader's audit trail)")
        return p

    reasoned("arm", "let the trader open positions (LIVE.ARM; refused while KILLED)")
    reasoned("disarm", "dry-run: the strategy keeps evaluating and recording, no order is sent - not even "
                       "take-profit / stop-loss exits (LIVE.DISARM)")
    k = reasoned("kill", "kill switch: cancel open orders, block new ones (KILL.SWITCH)")
    k.add_argument("--reset", action="store_true", help="leave KILLED for DISARMED (KILL.RESET)")
    k.add_argument("--flatten", action="store_true", help="after cancelling, sell every position at market")
    ex = reasoned("exit", "sell a position at market, or at a limit price (POSITION.EXIT)")
    ex.add_argument("market", help="market code, e.g. KRW-BTC, or 'all'")
    ex.add_argument("--limit", type=float, metavar="KRW", help="a limit sell at this price (rounded up to the tick)")
    sub.add_parser("positions", help="open positions with unrealized P&L")
    o = sub.add_parser("orders", help="open and recent orders, newest first")
    o.add_argument("-n", type=count, default=20, help="orders (default 20)")
    pn = sub.add_parser("pnl", help="realized/unrealized P&L, fees, win rate")
    pn.add_argument("--by", choices=tuple(PNL_BY), help="group closed trades by day, market or exit reason")
    tl = sub.add_parser("timeline", help="the trader's timeline: what it did and why")
    tl.add_argument("-n", type=count, default=30, help="entries (default 30)")
    sn = sub.add_parser("snapshot", help="the trader's full state as JSON (SNAPSHOT.GET)")
    sn.add_argument("market", nargs="?", help="limit the market part to this market")
    ev = sub.add_parser("events", help="print the trader's events as they happen, until Ctrl-C")
    ev.add_argument("--types", help="comma-separated type prefixes, e.g. ORDER.,FILL,MODE.")
    ev.add_argument("-n", "--count", type=int, default=0, help="stop after this many events (default: never)")
    pr = sub.add_parser("preset", help="apply a strategy preset, or a backtest's parameters (CONFIG.APPLY; refused "
                                       "while ARMED): preset SAFE | preset apply run/backtests/<id>")
    pr.add_argument("name", help="SAFE, BALANCED, AGGRESSIVE, or apply")
    pr.add_argument("source", nargs="?", help="with apply: a preset name, or a backtest's directory / params.json")
