"""The crash campaign: the whole pipeline under supervisord with the Upbit broker against the replay exchange,
the trader ARMED on a strategy that trades all the time, and ``kill -9`` of the trader at random moments and
inside the two windows that matter — between the ledger commit and the exchange placing the order
(``order_hold``: the request is held unplaced until the client dies) and between the exchange placing it and
the trader reading the answer (``order_slow``). Every trial also arms one order fault of the exchange
(dropped connection after placing, 500 after placing, 429, slow answer, rejection, partial fill then stall,
duplicate fill notification). supervisord restarts the trader; the campaign ARMs it again once it has
reconciled (it comes back DISARMED: a real broker is never ARMED at start).

At the end the exchange's order list and accounts are compared with the trader's ledger:

* ``duplicates``: identifiers placed twice, or a position with more than one entry order at the exchange;
* ``unknown_to_ledger``: orders at the exchange whose identifier the ledger does not have;
* ``unresolved``: ledger orders still ``submitted`` / ``unknown``;
* ``fill_mismatches``: orders whose executed volume differs between the exchange and the ledger;
* ``balance_mismatches``: KRW, or a coin, that differs between the exchange's account and the ledger.

``python -m tests.e2e.crash_campaign N`` runs it from a shell (``make chaos``: N = 100) and prints the
figures as JSON; :func:`run_campaign` is what the test calls with a small N.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import requests

from procs.runtime.config import ExchangeConfig
from procs.trading.client import TraderClient, TraderUnavailable
from procs.trading.ledger import ledger_path
from shm.segment import list_instance_objects, unlink_instance
from tests.helpers import Env, start_supervisord, stop_supervisord, wait_for

MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"]
WINDOWS = ("random", "commit_to_post", "post_to_response")
FAULTS = ("none", "order_drop", "order_500", "order_429", "order_slow", "order_reject", "order_partial",
          "fill_duplicate")
OVERLAY = """
[trader]
broker = "upbit"
preset = "AGGRESSIVE"
max_drawdown_pct = 60.0
[trader.strategy]
rule = "macd_above"
take_profit_pct = 0.5
stop_loss_pct = 0.5
daily_loss_pct = 60.0
max_positions = 4
order_share = 0.2
[trader.upbit]
order_timeout_s = 4.0
unknown_grace_s = 2.0
refresh_s = 0.5
poll_s = 0.05
[symbols]
top_n = 4
"""


class Campaign:
    def __init__(self, tmp: Path, speed: float = 3600.0, seed: int | None = None):
        self.instance = f"c{uuid.uuid4().hex[:10]}"
        self.env = Env(self.instance, tmp, run_base=Path(tempfile.mkdtemp(prefix="smtm", dir="/tmp")))
        self.env.write_overlay(markets=MARKETS, speed=speed, tail=OVERLAY)
        ex = ExchangeConfig()
        self.env.env.update(UPBIT_ACCESS_KEY=ex.access_key, UPBIT_SECRET_KEY=ex.secret_key)
        self.rng = random.Random(seed)
        self.kills: Counter = Counter()
        self.in_window: Counter = Counter()
        self.faults: Counter = Counter()
        self.arm_waits: list[float] = []
        self.sup = None

    # -- plumbing ---------------------------------------------------------------------------------------
    @property
    def sock(self) -> Path:
        return self.env.run_dir / "trader.sock"

    def admin(self, path: str, body: dict | None = None):
        url = self.env.base + path
        r = requests.post(url, json=body, timeout=5) if body is not None else requests.get(url, timeout=5)
        return r.json()

    def request(self, kind: str, payload: dict | None = None) -> dict:
        with TraderClient(self.sock, timeout_s=10) as c:
            return c.request(kind, payload or {})

    def trader_pid(self) -> int:
        """The trader's pid while supervisord says RUNNING, else 0."""
        info = self.sup.rpc().supervisor.getProcessInfo("trader")
        return int(info["pid"]) if info["statename"] == "RUNNING" and info["pid"] > 0 else 0

    def start(self) -> None:
        self.sup, _ = start_supervisord(self.env)
        wait_for(lambda: self.sup.running() and all(p["statename"] == "RUNNING" for p in self.sup.processes()), 90,
                 "every program RUNNING")
        wait_for(self.sock.exists, 30, "the trader's socket")

    def stop(self) -> None:
        if self.sup is not None:
            stop_supervisord(self.sup)
        unlink_instance(self.instance)
        assert not list_instance_objects(self.instance)

    def arm(self, timeout: float = 60.0) -> None:
        """ARM once the restarted trader has reconciled (refused meanwhile: an unknown order being looked up)."""
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < timeout:
            try:
                ack = self.request("LIVE.ARM")
                if ack["ok"] and ack["payload"]["mode"] == "ARMED":
                    self.arm_waits.append(time.monotonic() - t0)
                    return
                last = ack.get("error", {}).get("message", "")
            except (TraderUnavailable, OSError) as e:
                last = str(e)
            time.sleep(0.2)
        raise AssertionError(f"the trader could not be ARMED again within {timeout:.0f} s: {last}")

    # -- one trial ----------------------------------------------------------------------------------------
    def trial(self, k: int) -> None:
        window = WINDOWS[k % len(WINDOWS)]      # 3 windows x 8 faults: every pair once in 24 trials
        fault = FAULTS[k % len(FAULTS)]
        self.arm()
        self.admin("/faults", {"type": "clear"})
        if fault != "none":
            self.admin("/faults", {"type": fault, "count": 1, "seconds": 1.0 if fault == "order_partial" else 6.0})
            self.faults[fault] += 1
        hit = False
        if window == "random":
            time.sleep(self.rng.uniform(0.05, 3.0))
        else:
            self.admin("/faults", {"type": "order_hold" if window == "commit_to_post" else "order_slow",
                                   "count": 1, "seconds": 30.0})
            key = "held" if window == "commit_to_post" else "answering"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not hit:
                hit = self.admin("/faults")["orders_in_flight"][key] > 0
                if not hit:
                    time.sleep(0.01)
            if hit:
                time.sleep(self.rng.uniform(0.0, 0.3))     # somewhere inside the window
        pid = wait_for(self.trader_pid, 60, "the trader RUNNING under supervisord")
        assert pid > 0          # never kill(0): that is this process group
        os.kill(pid, signal.SIGKILL)
        self.kills[window] += 1
        self.in_window[window] += hit
        wait_for(lambda: self.trader_pid() not in (0, pid), 60, "supervisord to restart the trader")
        wait_for(lambda: self._answers(), 30, "the restarted trader's socket")

    def _answers(self) -> bool:
        try:
            self.request("ENGINE.STATUS")
            return True
        except (TraderUnavailable, OSError):
            return False

    # -- the verdict -------------------------------------------------------------------------------------
    def settle(self) -> dict:
        """DISARM, let every order finish, then compare the exchange with the ledger."""
        self.admin("/faults", {"type": "clear"})
        self.arm()
        self.request("LIVE.DISARM")
        wait_for(lambda: (s := self.request("ENGINE.STATUS")["payload"])["open_orders"] == 0
                 and s["reconcile"]["unknown_orders"] == 0, 60, "every order to finish")
        time.sleep(1.0)
        status = self.request("ENGINE.STATUS")["payload"]
        dump = self.admin("/replay/orders")
        return self.compare(dump, status)

    def compare(self, dump: dict, status: dict) -> dict:
        db = sqlite3.connect(f"file:{ledger_path(self.env.run_dir, 'upbit')}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        ledger = {r["identifier"]: r for r in db.execute("SELECT * FROM orders")}
        ex_orders = dump["orders"]
        idents = Counter(o.get("identifier") for o in ex_orders)
        entries = Counter(ledger[o["identifier"]]["position_id"] for o in ex_orders
                          if o.get("identifier") in ledger and ledger[o["identifier"]]["purpose"] == "entry")
        fill_mismatch = [o["identifier"] for o in ex_orders if o.get("identifier") in ledger
                         and abs(float(o["executed_volume"]) - ledger[o["identifier"]]["filled"]) > 1e-12]
        cash = db.execute("SELECT cash FROM account").fetchone()[0]
        held: dict[str, float] = {}
        for r in db.execute("SELECT market, qty FROM positions WHERE state = 'open'"):
            held[r["market"]] = held.get(r["market"], 0.0) + r["qty"]
        have = {a["currency"]: float(a["balance"]) + float(a["locked"]) for a in dump["accounts"]}
        balance = []
        if abs(have.get("KRW", 0.0) - cash) > 1.0:
            balance.append(f"KRW exchange {have.get('KRW')} ledger {cash}")
        for m in MARKETS:
            cur = m.split("-")[1]
            if abs(have.get(cur, 0.0) - held.get(m, 0.0)) > 1e-9:
                balance.append(f"{cur} exchange {have.get(cur, 0.0)} ledger {held.get(m, 0.0)}")
        states = Counter(r["state"] for r in ledger.values())
        report = {
            "trials": sum(self.kills.values()), "kills": dict(self.kills), "kills_inside_window": dict(self.in_window),
            "faults": dict(self.faults), "orders_at_exchange": len(ex_orders), "ledger_orders": len(ledger),
            "ledger_states": dict(states), "fills_at_exchange": dump["fills"],
            "duplicates": sum(n - 1 for i, n in idents.items() if i and n > 1) + sum(n - 1 for n in entries.values()
                                                                                    if n > 1),
            "unknown_to_ledger": sum(1 for o in ex_orders if o.get("identifier") not in ledger),
            "unresolved": states.get("unknown", 0) + states.get("submitted", 0),
            "fill_mismatches": len(fill_mismatch), "balance_mismatches": len(balance), "balance_detail": balance,
            "reconcile_problems": status["reconcile"]["problems"],
            "rejected_never_placed": sum(1 for r in ledger.values() if r["state"] == "rejected"
                                         and "never placed" in r["reason"]),
            "re_arm_wait_s_max": round(max(self.arm_waits), 2) if self.arm_waits else 0.0,
            "exchange_status_counts": dump["status_counts"],
        }
        db.close()
        return report


def run_campaign(tmp: Path, n: int, seed: int | None = None) -> dict:
    c = Campaign(tmp, seed=seed)
    c.start()
    try:
        for k in range(n):
            c.trial(k)
        return c.settle()
    finally:
        c.stop()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    t0 = time.monotonic()
    out = run_campaign(Path(tempfile.mkdtemp(prefix="chaos")), n)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out, indent=2))
    ok = not (out["duplicates"] or out["unknown_to_ledger"] or out["unresolved"] or out["balance_mismatches"]
              or out["fill_mismatches"])
    raise SystemExit(0 if ok else 1)
