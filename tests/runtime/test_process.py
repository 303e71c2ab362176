"""The one process runtime: the lifecycle as a guarded transition table, one stop mechanism, failures
that are loud (FAILED + exit 1), and every program stopping cleanly on SIGTERM (regression: the
indicator died with a posix_ipc.SignalError traceback on every SIGTERM)."""
import os
import signal
import threading

import pytest
import requests

from procs.runtime.process import TRANSITIONS, IllegalTransition, Process
from procs.runtime.roster import STATUS_ROWS
from shm.status import State, StatusTable
from shm.tables import CANDLES
from tests.helpers import FakeClock, attach, wait_for


class Recorder(Process):
    """A test program: records every state it passes through."""
    name = "symbols"

    def __init__(self, *a, ticks=3, fail_in=None, **kw):
        self.seen: list[State] = []
        self.ticks, self.fail_in = ticks, fail_in
        super().__init__(*a, **kw)

    def set_state(self, target):
        super().set_state(target)
        self.seen.append(target)

    def on_start(self):
        if self.fail_in == "start":
            raise RuntimeError("cannot attach")

    def on_tick(self):
        if self.fail_in == "tick":
            raise RuntimeError("the work loop died")
        self.ticks -= 1
        if self.ticks <= 0:
            self.request_stop()
        self.idle(0.1)


def base(instance, tmp_path):
    from procs.runtime.config import BaseConfig, ShmConfig
    return BaseConfig("replay", instance, tmp_path / instance, ("KRW-BTC",), ShmConfig())


def test_every_state_follows_the_table(instance, tmp_path):
    p = Recorder(base(instance, tmp_path), clock=FakeClock())
    assert p.run() == 0
    assert p.seen == [State.STARTING, State.RUNNING, State.STOPPING, State.STOPPED]
    row = StatusTable.open(instance, STATUS_ROWS).read("symbols")
    assert State(int(row["state"])) is State.STOPPED and int(row["pid"]) == os.getpid()
    with pytest.raises(IllegalTransition):
        p.set_state(State.RUNNING)            # STOPPED -> RUNNING must go through STARTING
    assert set(TRANSITIONS) == set(State)     # every state the status table can show is in the table


@pytest.mark.parametrize("where", ["start", "tick"])
def test_a_failure_is_loud_and_exits_1(instance, tmp_path, where, caplog):
    p = Recorder(base(instance, tmp_path), fail_in=where, clock=FakeClock())
    assert p.run() == 1
    assert p.seen[-1] is State.FAILED and State.STOPPED not in p.seen
    assert State(int(StatusTable.open(instance, STATUS_ROWS).read("symbols")["state"])) is State.FAILED
    assert "symbols failed" in caplog.text and "RuntimeError" in caplog.text


def test_a_dead_worker_thread_fails_the_process(instance, tmp_path):
    class WithWorker(Recorder):
        def on_start(self):
            self.start_worker(lambda: (_ for _ in ()).throw(ConnectionError("socket gone")), "websocket")
            threading.Event().wait(0.05)
    p = WithWorker(base(instance, tmp_path), ticks=100)
    assert p.run() == 1 and p.seen[-1] is State.FAILED


def test_sigterm_stops_every_program_cleanly(env):
    """Each program, started as supervisord starts it, exits 0 on SIGTERM with its row STOPPED and
    no traceback in its log. The indicator is parked on its semaphore when the signal comes."""
    env.write_overlay(markets=["KRW-BTC", "KRW-ETH"], speed=3600.0)
    names = ["exchange", "ingest", "indicator", "symbols", "monitor"]
    procs = {n: env.start(n, *(["--offscreen"] if n == "monitor" else [])) for n in names}
    st = wait_for(lambda: attach(StatusTable.open, env.instance, STATUS_ROWS), 30, "the status table")
    ring = wait_for(lambda: attach(CANDLES.open, env.instance, "30m", 32, 2048), 30, "candles.30m")
    wait_for(lambda: ring.counts().sum() > 0, 60, "candles")
    wait_for(lambda: all(st.read(n)["state"] in (State.RUNNING, State.DISCONNECTED) for n in names)
             and int(st.read("monitor")["msgs_out"]) > 0, 90, "every program running")
    requests.post(env.base + "/replay/control", json={"pause": True}, timeout=5)
    wait_for(lambda: int(st.read("indicator")["parked"]) == 1, 10, "the indicator to park on its semaphore")
    for n in ["indicator", "monitor", "symbols", "ingest", "exchange"]:
        os.killpg(procs[n].pid, signal.SIGTERM)
        assert procs[n].wait(timeout=20) == 0, f"{n} exited {procs[n].returncode}:\n{env.log(n)[-2000:]}"
        assert State(int(st.read(n)["state"])) is State.STOPPED, n
        assert "Traceback" not in env.log(n), f"{n}:\n{env.log(n)[-2000:]}"
