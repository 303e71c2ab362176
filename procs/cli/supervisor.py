"""``smtm up`` / ``down`` / ``ctl``: one instance's supervisord (supervision itself is supervisord's).

The repository's ``supervisord.conf`` names every path after the instance
(``run/%(ENV_SMTM_INSTANCE)s/``: socket, pid file, logs), so instances run side by side from one
checkout; ``smtm`` always exports ``SMTM_INSTANCE`` (and ``SMTM_PROFILE``, ``SMTM_REPLAY``) to
supervisord, whose programs inherit them. supervisord's XML-RPC is reached over the instance's
Unix socket; a fresh proxy is built for every call (its transport is unusable after one failed
call).
"""
from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from shm.segment import ShmError, unlink_instance
from shm.status import State, StatusTable

from ..runtime.config import Config
from ..runtime.endpoints import EndpointUnavailable, lookup
from ..runtime.roster import PROGRAMS, STATUS_ROWS


class Supervisor:
    """Paths and XML-RPC access of one instance's supervisord, from a supervisord configuration."""

    def __init__(self, conf: Path, instance: str):
        self.conf = Path(conf).resolve()
        self.instance = instance
        cp = configparser.RawConfigParser()
        if not cp.read(self.conf):
            raise SystemExit(f"supervisord configuration {self.conf} not found")
        self.socket = self._expand(cp.get("unix_http_server", "file"))
        self.logdir = Path(self._expand(cp.get("supervisord", "childlogdir")))
        if len(self.socket.encode()) > 100:
            raise SystemExit(f"supervisord socket path is {len(self.socket)} bytes (Unix sockets allow ~107): "
                             f"{self.socket}; clone the repository to a shorter path")

    def _expand(self, value: str) -> str:
        env = {"here": str(self.conf.parent), "ENV_SMTM_INSTANCE": self.instance}
        return re.sub(r"%\((\w+)\)s", lambda m: env.get(m.group(1), os.environ.get(m.group(1)[4:], m.group(0))), value)

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

    def env(self, cfg: Config) -> dict:
        env = dict(os.environ)
        env.update(SMTM_PROFILE=cfg.profile, SMTM_INSTANCE=cfg.instance,
                   SMTM_REPLAY="true" if cfg.exchange.enabled else "false", SMTM_BROKER=cfg.trader.broker)
        if cfg.trader.broker == "upbit" and cfg.exchange.enabled and cfg.upbit.rest_url == "auto":
            # the Upbit broker against the replay exchange: its replay-only keys (never real ones)
            env.update(UPBIT_ACCESS_KEY=cfg.exchange.access_key, UPBIT_SECRET_KEY=cfg.exchange.secret_key)
        return env

    def ctl(self, args: list[str]) -> int:
        """``supervisorctl`` of this instance with ``args``; returns its exit code."""
        exe = Path(sys.executable).parent / "supervisorctl"
        cmd = [str(exe) if exe.exists() else "supervisorctl", "-c", str(self.conf), "-s", f"unix://{self.socket}",
               *args]
        return subprocess.run(cmd, env=dict(os.environ, SMTM_INSTANCE=self.instance)).returncode


def expected_programs(cfg: Config) -> list[str]:
    return [p.name for p in PROGRAMS if cfg.exchange.enabled or not p.replay_only]


def cmd_up(args, cfg: Config, sup: Supervisor) -> int:
    from .inspect import cmd_status
    sup.logdir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if sup.running():
        print(f"supervisord of instance {cfg.instance!r} is already running ({sup.socket}); `smtm down` first to "
              f"change profile.")
    else:
        exe = Path(sys.executable).parent / "supervisord"
        r = subprocess.run([str(exe) if exe.exists() else "supervisord", "-c", str(sup.conf)], env=sup.env(cfg),
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout + r.stderr, file=sys.stderr)
            return 1
        (cfg.run_dir / "profile").write_text(cfg.profile + "\n")
        print(f"supervisord started (profile {cfg.profile}, broker {cfg.trader.broker}, instance {cfg.instance})")
    expected = expected_programs(cfg)
    t0 = time.monotonic()
    states = _wait_running(sup, expected, args.timeout)
    _wait_ready(cfg, expected, max(1.0, min(20.0, args.timeout - (time.monotonic() - t0))))
    cmd_status(args, cfg, sup)
    bad = [p for p in expected if states.get(p) != "RUNNING"]
    if bad:
        print(f"\nnot RUNNING after {args.timeout:.0f} s: {', '.join(bad)} — see {sup.logdir}/<name>.log",
              file=sys.stderr)
        return 1
    _print_where(cfg, sup)
    return 0


def _wait_running(sup: Supervisor, expected: list[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    states: dict = {}
    while time.monotonic() < deadline:
        try:
            states = {p["name"]: p["statename"] for p in sup.processes()}
        except (OSError, xmlrpc.client.Fault):
            states = {}
        if states and all(states.get(p) == "RUNNING" for p in expected):
            break
        time.sleep(0.25)
    return states


def _wait_ready(cfg: Config, expected: list[str], timeout: float) -> None:
    """Until every program's own row says RUNNING (supervisord's RUNNING only means "alive for a
    second"); a program that stays STARTING or DISCONNECTED shows so in the status that follows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = StatusTable.open(cfg.instance, STATUS_ROWS).read_all()
            if all(int(rows[p]["state"]) == State.RUNNING for p in expected):
                return
        except ShmError:
            pass
        time.sleep(0.2)


def _published(cfg: Config, name: str, wait_s: float):
    """The address ``name`` published in the run dir, waited for up to ``wait_s`` (a server publishes it once it
    listens, just after supervisord calls it RUNNING); the :class:`EndpointUnavailable` if it did not."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return lookup(cfg.run_dir, name)
        except EndpointUnavailable as e:
            if time.monotonic() > deadline:
                return e
            time.sleep(0.2)


def _print_where(cfg: Config, sup: Supervisor, wait_s: float = 15.0) -> None:
    if cfg.exchange.enabled:    # RUNNING comes before the exchange has built its tape
        ep = _published(cfg, "exchange", wait_s)
        print(f"\nreplay exchange: {ep}" if isinstance(ep, EndpointUnavailable) else
              f"\nreplay exchange: {ep.http} (published in {cfg.run_dir / 'exchange.json'})")
    gw = _published(cfg, "gateway", 5.0)
    print(f"gateway: {gw}" if isinstance(gw, EndpointUnavailable) else
          f"dashboard: {gw.http}/   (the gateway's read-only API: {gw.http}/docs; from another machine: "
          f"ssh -L {gw.port}:127.0.0.1:{gw.port} <this host>, then the same URLs there)")
    if os.environ.get("DISPLAY") and os.environ.get("SMTM_MONITOR_OFFSCREEN") != "1":
        print(f"monitor: a window on display {os.environ['DISPLAY']}")
    else:
        print(f"monitor: no display, rendering off-screen; snapshot every "
              f"{cfg.monitor.snapshot_interval_s:g} s at {cfg.run_dir / 'monitor.png'}")
    print(f"programs: smtm ctl status (supervisorctl of instance {cfg.instance!r})   |   candles: smtm tail KRW-BTC")


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
        print(f"supervisord of instance {cfg.instance!r} stopped")
    else:
        print(f"supervisord of instance {cfg.instance!r} was not running")
    removed = unlink_instance(cfg.instance)
    print(f"unlinked {len(removed)} shared-memory objects of instance {cfg.instance!r}"
          + (": " + ", ".join(removed) if removed else ""))
    return 0


def cmd_ctl(args, cfg: Config, sup: Supervisor) -> int:
    return sup.ctl(args.args or ["status"])
