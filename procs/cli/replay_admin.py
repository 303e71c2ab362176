"""``smtm replay`` / ``fault``: the replay exchange's admin routes, at the address it published."""
from __future__ import annotations

import sys

from ..runtime.config import Config
from ..runtime.endpoints import EndpointUnavailable, lookup
from .supervisor import Supervisor


def _admin(cfg: Config, method: str, path: str, body: dict | None = None):
    try:
        url = lookup(cfg.run_dir, "exchange").http + path
    except EndpointUnavailable as e:
        raise SystemExit(f"replay exchange of instance {cfg.instance!r}: {e}") from None
    import requests  # only the replay commands pay for it (30 ms), not every smtm command
    try:
        r = requests.request(method, url, json=body, timeout=5)
    except requests.RequestException as e:
        raise SystemExit(f"replay exchange not reachable at {url}: {e}") from None
    doc = r.json()
    if r.status_code >= 400:
        raise SystemExit(f"{url}: {doc.get('error', doc)}")
    return doc


def _progress_line(p: dict) -> str:
    state = ("finished" if p["finished"] else "paused" if p["paused"] else "running" if p["started"]
             else "waiting for a subscriber")
    fastest = " (as fast as consumers keep up)" if p["speed"] == 0 else ""
    pace = f"rate {p['rate']:,.0f} trades/s" if p.get("rate") else f"speed x{p['speed']:g}{fastest}"
    return (f"replay {state}: {p['replay_time']}  {p['percent']:.1f}% ({p['position']:,}/{p['trades']:,} trades)  "
            f"{pace}  clients {p['clients']}")


def cmd_replay(args, cfg: Config, sup: Supervisor) -> int:
    if args.action == "status":
        print(_progress_line(_admin(cfg, "GET", "/replay/status")))
        return 0
    if args.action == "speed":
        if args.value is None:
            print("replay speed: give a number (replay seconds per wall second; 0 = as fast as possible)",
                  file=sys.stderr)
            return 2
        body = {"speed": args.value}
    elif args.action == "rate":
        if args.value is None:
            print("replay rate: give a number (trades per wall second, re-stamped to run at wall time; 0 = paced by "
                  "speed)", file=sys.stderr)
            return 2
        body = {"rate": args.value}
    else:
        body = {args.action: True}
    print(_progress_line(_admin(cfg, "POST", "/replay/control", body)))
    return 0


def cmd_fault(args, cfg: Config, sup: Supervisor) -> int:
    body = {"type": args.type, "count": args.count, "seconds": args.seconds}
    state = _admin(cfg, "POST", "/faults", body)
    print(f"fault {args.type} injected; now: " + ", ".join(f"{k}={v}" for k, v in state.items() if k != "applied"))
    return 0
