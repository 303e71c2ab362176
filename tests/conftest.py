"""Fixtures: every test gets its own shared-memory instance (unlinked afterwards), its own
run directory and loopback port; processes started by a test are always stopped."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from shm.segment import list_instance_objects, unlink_instance

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "upbit"
ALL_MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL", "KRW-DOGE", "KRW-ADA",
               "KRW-LINK", "KRW-ETC", "KRW-SAND", "KRW-HBAR", "KRW-XLM", "KRW-SHIB"]


@pytest.fixture
def instance():
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    unlink_instance(name)
    assert not list_instance_objects(name), "test left shared-memory objects behind"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env:
    """An instance's environment: config overlay, run dir, processes."""

    def __init__(self, instance: str, tmp: Path):
        self.instance = instance
        self.tmp = tmp
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.overlay = tmp / "overlay.toml"
        self.env = dict(os.environ, SMTM_INSTANCE=instance, SMTM_CONFIG=str(self.overlay),
                        SMTM_RUN_DIR=str(tmp / "run"), SMTM_PROFILE="replay", PYTHONUNBUFFERED="1")
        self.env.pop("DISPLAY", None)

    def write_overlay(self, *, markets=None, capacity=2048, speed=0.0, extra: str = "", exchange: str = "") -> None:
        """Config overlay: loopback port, markets, ring capacity, replay speed; ``extra`` lines go
        into [ingest], ``exchange`` lines into [exchange]."""
        markets = markets or ALL_MARKETS
        self.overlay.write_text(f"""
[markets]
codes = {markets!r}
[shm]
capacity = {capacity}
[exchange]
port = {self.port}
speed = {speed}
{exchange}
[ingest]
ws_url = "ws://127.0.0.1:{self.port}/websocket/v1"
rest_url = "http://127.0.0.1:{self.port}"
backoff_base_s = 0.2
backoff_cap_s = 1.0
{extra}
""".replace("'", '"'))

    def start(self, module: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{module}.log", "w")
        p = subprocess.Popen([sys.executable, "-m", f"procs.{module}", *args], cwd=ROOT, env=self.env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def log(self, module: str) -> str:
        return (self.tmp / f"{module}.log").read_text()

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


@pytest.fixture
def env(instance, tmp_path):
    e = Env(instance, tmp_path)
    yield e
    e.stop_all()


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
