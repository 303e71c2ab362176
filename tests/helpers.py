"""Shared test helpers (imported by tests; the fixtures in conftest.py use them too).

:class:`Env` is one test instance: its own shared-memory instance name, run directory and config
overlay; processes it starts are stopped at the end. Servers bind port 0 and publish the port
they got in the run directory (``procs.runtime.endpoints``), so suites never race for ports.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from procs.runtime.endpoints import EndpointUnavailable, lookup
from procs.runtime.roster import program

ROOT = Path(__file__).resolve().parent.parent
ALL_MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL", "KRW-DOGE", "KRW-ADA",
               "KRW-LINK", "KRW-ETC", "KRW-SAND", "KRW-HBAR", "KRW-XLM", "KRW-SHIB"]
DATA = ROOT / "data" / "upbit"


class Env:
    """An instance's environment: config overlay, run dir, processes."""

    def __init__(self, instance: str, tmp: Path, run_base: Path | None = None):
        self.instance = instance
        self.tmp = tmp
        self.run_base = run_base or tmp / "run"
        self.run_dir = self.run_base / instance
        self.procs: list[subprocess.Popen] = []
        self.overlay = tmp / "overlay.toml"
        self.env = dict(os.environ, SMTM_INSTANCE=instance, SMTM_CONFIG=str(self.overlay),
                        SMTM_RUN_DIR=str(self.run_base), SMTM_PROFILE="replay", PYTHONUNBUFFERED="1")
        self.env.pop("DISPLAY", None)

    def write_overlay(self, *, markets=None, capacity=2048, speed=0.0, extra: str = "", exchange: str = "",
                      rows: int = 32, shm: str = "", tail: str = "", gateway: str = "port = 0") -> None:
        """Config overlay: markets, ring capacity, replay speed; ``extra`` lines go into [ingest],
        ``exchange`` lines into [exchange], ``shm`` lines into [shm], ``gateway`` into [gateway] (by default any
        free port: tests run beside each other and beside a user's instance); ``tail`` is appended (more
        sections)."""
        markets = markets or ALL_MARKETS
        self.overlay.write_text(f"""
[markets]
codes = {markets!r}
[shm]
rows = {rows}
capacity = {capacity}
{shm}
[exchange]
speed = {speed}
{exchange}
[ingest]
backoff_base_s = 0.2
backoff_cap_s = 1.0
{extra}
[gateway]
{gateway}
{tail}
""".replace("'", '"'))

    @property
    def base(self) -> str:
        """The replay exchange's HTTP base URL (waits until it has published its port)."""
        return wait_for(lambda: published(self.run_dir), 30, "the exchange to publish its port").http

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start the program ``name`` of the roster (``exchange``, ``ingest``, ...)."""
        with open(self.tmp / f"{name}.log", "w") as log:   # the child keeps its own copy of the descriptor
            p = subprocess.Popen([sys.executable, "-m", program(name).module, *args], cwd=ROOT, env=self.env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def published(run_dir: Path):
    """The replay exchange's published endpoint in ``run_dir``, or None while it has not published one."""
    try:
        return lookup(run_dir, "exchange")
    except EndpointUnavailable:
        return None


def get_json(url: str):
    """The JSON body at ``url`` on loopback, or None while the server is not answering."""
    import requests
    try:
        return requests.get(url, timeout=2).json()
    except (requests.RequestException, ValueError):
        return None


def attach(open_fn, *args):
    """``open_fn(*args)`` (a read-only table), or None while its writer has not created it yet."""
    from shm.segment import ShmError
    try:
        return open_fn(*args)
    except ShmError:
        return None


def wait_for(pred, timeout: float, what: str, interval: float = 0.05):
    """Poll ``pred`` (bounded); raise AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_supervisord(env: Env, *, conf_dir: Path | None = None):
    """Start supervisord with the repository's own ``supervisord.conf`` for ``env``'s instance: its
    ``run/`` pointed at the test's run base (as ``SMTM_RUN_DIR``), its interpreter at this one.
    Returns ``(Supervisor, conf path)``; stop it with :func:`stop_supervisord`."""
    from procs.cli.supervisor import Supervisor
    conf_dir = conf_dir or env.tmp / "sv"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (env.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    text = (ROOT / "supervisord.conf").read_text()
    text = text.replace("%(here)s/.venv/bin/python", sys.executable).replace("%(here)s/run", str(env.run_base))
    text = text.replace("%(here)s", str(ROOT))
    conf = conf_dir / "supervisord.conf"
    conf.write_text(text)
    e = dict(env.env, SMTM_REPLAY="true")
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "supervisord"), "-c", str(conf)], env=e, check=True)
    return Supervisor(conf, env.instance), conf


def stop_supervisord(sup) -> None:
    try:
        pid = sup.rpc().supervisor.getPID()
        sup.rpc().supervisor.shutdown()
    except OSError:
        return
    wait_for(lambda: not _alive(pid), 30, "supervisord to exit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class FakeClock:
    """A :class:`procs.runtime.clock.Clock` that tests move by hand: ``advance(s)``; ``wait``
    advances time instead of sleeping (and returns at once if the event is set)."""

    def __init__(self, monotonic: float = 1000.0, wall_ns: int = 1_730_000_000 * 10**9):
        self.now = monotonic
        self.wall_ns = wall_ns

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return self.wall_ns + int((self.now - 1000.0) * 1e9)

    def wait(self, event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.advance(seconds)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        self.now += seconds


def closed_candle_mismatch(ring, src: dict, markets, *, min_closed: int = 1, value_rel: float | None = None):
    """None if every candle of each market before its newest (open) one equals the source candles
    ``src[market]`` (``t o h l c v`` exactly; ``value`` to ``value_rel`` relative, if given), else
    a description of the first difference: ``(market, fields, n_closed, n_source, index, got, expected)``
    (``fields`` is ``"rows"`` for a market with fewer than ``min_closed`` closed candles)."""
    import numpy as np
    fields = ("t", "o", "h", "l", "c", "v")
    for m in markets:
        got = ring.read_last_of(m, ring.capacity)
        closed = got[0][:-1] if got is not None else []
        if len(closed) < min_closed:
            return (m, "rows", len(closed), None, None, None, None)
        k = int(np.searchsorted(src[m]["t"], closed["t"][0]))
        exp = src[m][k:k + len(closed)]
        bad = [f for f in fields if len(exp) != len(closed) or not np.array_equal(closed[f], exp[f])]
        if bad:
            n = min(len(exp), len(closed))
            i = int(np.argmax(closed[bad[0]][:n] != exp[bad[0]][:n])) if n else 0
            return (m, bad, len(closed), len(exp), i, closed[i] if i < len(closed) else None,
                    exp[i] if i < len(exp) else None)
        if value_rel is not None and np.max(np.abs(closed["value"] - exp["value"]) / exp["value"]) > value_rel:
            return (m, ["value"], len(closed), len(exp), None, None, None)
    return None


def replay_to_the_trader(env: Env, timeout: float = 240, tradable: list[str] | bool | None = None,
                         then_speed: float = 0.0):
    """Start exchange, indicator, symbols, trader and ingest for ``env`` (its overlay written), let the
    replay run to its end and the trader see every trade and commit. Returns ``(client, trades,
    seconds from ingest's start to the replay's end)``; the caller closes the client.

    ``tradable``: the replay waits until the trader has attached (so it sees every trade), and once the
    trader's tradable set is these markets (``True``: any set; the symbol manager's first ranking, at the
    overlay's replay speed) it goes on at ``then_speed`` (0: as fast as its consumers keep up);
    ``env.ranked_ms`` is then the trader's market time when it was seen (the ranking came no later). Without
    it the replay runs at the overlay's speed from the start, and the symbol manager (which polls in wall
    time) may not rank before it ends."""
    import requests

    from procs.runtime.roster import STATUS_ROWS
    from procs.trading.client import TraderClient
    from shm.status import State, StatusTable
    for p in ("exchange", "indicator", "symbols", "trader"):
        env.start(p)
    base = f"http://127.0.0.1:{env.port}"
    wait_for(lambda: get_json(f"{base}/replay/status"), 30, "the replay exchange to listen")
    sock = env.run_dir / "trader.sock"
    wait_for(sock.exists, 30, "the trader's socket")
    control = f"{base}/replay/control"
    if tradable is not None:      # paused until the trader has attached: it sees the replay from its first trade
        requests.post(control, json={"pause": True}, timeout=5).raise_for_status()
    env.start("ingest")
    t0 = time.monotonic()
    if tradable is not None:
        st = wait_for(lambda: attach(StatusTable.open, env.instance, STATUS_ROWS), 30, "the status table")
        wait_for(lambda: st.read("trader")["state"] == State.RUNNING, 30, "the trader to attach")
        requests.post(control, json={"resume": True}, timeout=5).raise_for_status()
        client = TraderClient(sock)
        want = None if tradable is True else sorted(tradable)
        ranked = wait_for(lambda: (lambda s: s if s["tradable"] is not None and want in (None, s["tradable"])
                                   else None)(client.request("ENGINE.STATUS")["payload"]), 60,
                          f"the trader to trade {'a ranked top N' if want is None else want}")
        client.close()
        requests.post(control, json={"speed": then_speed}, timeout=5).raise_for_status()
        env.ranked_ms = ranked["market_ms"]     # market time at which the trader had them (at most)
    wait_for(lambda: (get_json(f"{base}/replay/status") or {}).get("finished"), timeout, "the replay to finish",
             interval=0.2)
    wall = time.monotonic() - t0
    status = StatusTable.open(env.instance, STATUS_ROWS)
    sent = get_json(f"{base}/replay/status")["frames_sent"]
    wait_for(lambda: int(status.read("ingest")["msgs_in"]) >= sent, 60, "ingest to read every frame")
    trades = int(status.read("ingest")["msgs_out"])
    client = TraderClient(sock)
    wait_for(lambda: (lambda st: st["trades_seen"] >= trades and not st["uncommitted"])(
        client.request("ENGINE.STATUS")["payload"]), 60, "the trader to see every trade and commit")
    return client, trades, wall


REPLAY_KEYS = {"test-access-key-000000000000000000000": ("test-secret-key-000000000000000000000", ("view", "order")),
               "view-access-key-000000000000000000000": ("view-secret-key-000000000000000000000", ("view",))}


class ExchangeThread:
    """A replay exchange served on loopback from a thread of this process (its asyncio loop), whose replay is
    stepped by the test: :meth:`trade` sends one trade of the tape through the exchange (matching orders
    first, as the replay loop does) and returns when it has. Real HTTP, real JWT: what a broker talks to."""

    def __init__(self, markets: list[str], start_day: str = "2024-11-01", end_day: str = "2024-11-03",
                 trades_per_candle: int = 6, account_krw: float = 10_000_000.0, fee_rate: float = 0.0005,
                 slippage_pct: float = 0.05):
        import asyncio
        import threading
        from datetime import UTC, datetime

        from procs.market.tape import ReplayTape, load_market_all
        from procs.replay.server import ReplayExchange, serve
        from procs.trading.fills import FillModel

        def day(s):
            return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp())
        self.tape = ReplayTape.build(DATA, markets, trades_per_candle, day(start_day), day(end_day))
        self.exchange = ReplayExchange(self.tape, load_market_all(DATA), 0.0, 1000, account_krw=account_krw,
                                       keys=REPLAY_KEYS, fill_model=FillModel(fee_rate, slippage_pct))
        self.loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        bound = threading.Event()
        self.port = 0

        def on_listening(host, port):
            self.port = port
            bound.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve(self.exchange, "127.0.0.1", 0, self._stop, on_listening))
        self.thread = threading.Thread(target=run, name="exchange", daemon=True)
        self.thread.start()
        if not bound.wait(30):
            raise AssertionError("the replay exchange did not start")
        self.url = f"http://127.0.0.1:{self.port}"
        self.access, (self.secret, _) = next(iter(REPLAY_KEYS.items()))
        self.i = 0      # next trade of the tape

    def run(self, coro_fn, *args):
        import asyncio
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self.loop).result(30)

    def trade(self):
        """Send the next trade of the tape through the exchange; returns it (a TRADE_DTYPE record) or None."""
        if self.i >= len(self.tape.trades):
            return None
        rec = self.tape.trades[self.i]
        self.i += 1
        self.run(self.exchange.replayer._emit, *rec.tolist())
        return rec

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the exchange's loop (its state is single-threaded)."""
        async def go():
            return fn(*args)
        return self.run(go)

    def client(self, **kw):
        from procs.upbit.exchange import Credentials, ExchangeClient
        return ExchangeClient(self.url, Credentials(self.access, self.secret), **kw)

    def close(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """Xvfb on a display number it picks itself (``-displayfd``): two suites never collide."""
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        ready, _, _ = select.select([f], [], [], 30)
        num = f.readline().strip() if ready else ""
    if not num:
        xvfb.kill()
        raise AssertionError("Xvfb did not report its display")
    return xvfb, f":{num}"


def headless_chromium(window: tuple[int, int]):
    """Debian's chromium, headless, driven by selenium (chromium-driver), at ``window`` pixels; fails the test naming
    the packages when they are missing (make debs installs them as root). The caller quits it."""
    import pytest
    driver_path = shutil.which("chromedriver")
    if driver_path is None or shutil.which("chromium") is None:
        pytest.fail("chromium and chromium-driver are needed (make debs installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={window[0]},{window[1]}"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    return webdriver.Chrome(service=Service(driver_path), options=opts)
