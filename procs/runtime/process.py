"""One process runtime: the lifecycle every program runs through.

A program subclasses :class:`Process` and fills in hooks; :meth:`Process.run` does the rest the
same way for all of them:

* **Lifecycle as a transition table** (:data:`TRANSITIONS`, as supervisor's ``process.py`` and
  nautilus' ``Component`` guard theirs): ``STOPPED → STARTING → RUNNING ⇄ DISCONNECTED →
  STOPPING → STOPPED``, and ``FAILED`` from any live state. An illegal transition raises
  :class:`IllegalTransition`. Every transition is published in the program's ``status`` row.
* **Hooks**: ``on_start()`` (attach tables, open connections), ``on_tick()`` (one unit of work;
  it waits for work itself, e.g. on a semaphore or with :meth:`Process.idle`), ``on_beat()``
  (fill counters and ``detail`` before each heartbeat), ``on_stop()`` (clean up). A program
  with its own event loop (asyncio, Qt) overrides :meth:`Process.run_loop` instead of
  ``on_tick`` and calls :meth:`Process.heartbeat` from it.
* **One stop mechanism**: SIGTERM and SIGINT call :meth:`Process.request_stop`, which only sets
  an event and calls ``on_stop_requested()`` (signal-safe work: shut a socket down, post a
  loop) — it never raises, so it cannot interrupt a seqlock write half-way.
* **Failure is loud**: an exception out of a hook, or a worker thread started with
  :meth:`Process.start_worker` that dies, is logged with its traceback, the row says FAILED,
  and the process exits 1, so supervisord restarts it. Alive-but-stalled is not a state.
* **Injected time**: the clock (``procs.runtime.clock``) and therefore every wait.

Exit codes: 0 after a stop request, 1 after a failure, 2 for a configuration error
(:func:`start`).
"""
from __future__ import annotations

import abc
import argparse
import contextlib
import logging
import signal
import threading
from collections.abc import Callable

from shm.status import State, StatusRow, StatusTable

from .clock import SYSTEM_CLOCK, Clock
from .config import BaseConfig, Config, ConfigError
from .loader import load_config
from .roster import STATUS_ROWS, program

#: state → the states it may go to.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.DISCONNECTED, State.STOPPING, State.FAILED}),
    State.RUNNING: frozenset({State.DISCONNECTED, State.STOPPING, State.FAILED}),
    State.DISCONNECTED: frozenset({State.RUNNING, State.STOPPING, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
    State.FAILED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A state change the transition table does not allow."""


class WorkerDied(RuntimeError):
    """A worker thread of the process ended without a stop request."""


class Process(abc.ABC):
    """Base of every program. ``name`` is its roster name (its ``status`` row)."""

    name: str = ""
    heartbeat_s: float = 0.25

    def __init__(self, base: BaseConfig, *, clock: Clock = SYSTEM_CLOCK):
        program(self.name)  # a roster name, or KeyError
        self.base = base
        self.clock = clock
        self.log = logging.getLogger(f"smtm.{self.name}")
        self.status = StatusTable.writer(base.instance, STATUS_ROWS)
        self.row = StatusRow(self.status, self.name)
        self.state = State.STOPPED
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._worker_errors: dict[str, BaseException] = {}
        self._last_beat = -1e18

    # -- hooks ----------------------------------------------------------------------------------
    def on_start(self) -> None:
        """Attach tables, open connections. May set DISCONNECTED instead of RUNNING."""

    @abc.abstractmethod
    def on_tick(self) -> None:
        """One unit of work; waits for work itself (semaphore, :meth:`idle`)."""

    def on_beat(self) -> None:
        """Fill ``self.row``'s counters and detail before a heartbeat."""

    def on_stop_requested(self) -> None:
        """Runs inside the signal handler: signal-safe work only (set flags, shut a socket down)."""

    def on_stop(self) -> None:
        """Clean up (join threads, flush files)."""

    # -- state ----------------------------------------------------------------------------------
    def set_state(self, target: State) -> None:
        """Guarded transition (raises :class:`IllegalTransition`), published at once."""
        if target is self.state:
            return
        if target not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.name}: {self.state.name} -> {target.name} is not allowed")
        self.log.debug("%s -> %s", self.state.name, target.name)
        self.state = target
        self.row.beat(target)
        self._last_beat = self.clock.monotonic()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, *_) -> None:
        """SIGTERM/SIGINT (or a caller): stop after the current tick. Signal-safe, never raises."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.on_stop_requested()

    def idle(self, seconds: float) -> bool:
        """Wait up to ``seconds`` (heartbeating); True as soon as a stop is requested."""
        deadline = self.clock.monotonic() + seconds
        while True:
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return self.stopping
            if self.clock.wait(self._stop, min(left, self.heartbeat_s)):
                return True
            self.heartbeat()

    def heartbeat(self, force: bool = False) -> None:
        """Publish the status row if a heartbeat is due (``on_beat`` first)."""
        now = self.clock.monotonic()
        if force or now - self._last_beat >= self.heartbeat_s:
            self.on_beat()
            self.row.beat(self.state)
            self._last_beat = now

    # -- workers --------------------------------------------------------------------------------
    def start_worker(self, target: Callable[[], None], name: str) -> threading.Thread:
        """Run ``target`` on a daemon thread that the run loop watches: if it ends (returns or
        raises) before a stop request, the process fails."""
        def body():
            try:
                target()
            except BaseException as e:
                self._worker_errors[name] = e
                self.log.exception("worker thread %s died", name)
        t = threading.Thread(target=body, name=name, daemon=True)
        self._workers.append(t)
        t.start()
        return t

    def check_workers(self) -> None:
        """Raise :class:`WorkerDied` if a worker ended without a stop request."""
        if self.stopping:
            return
        for t in self._workers:
            if not t.is_alive():
                err = self._worker_errors.get(t.name)
                raise WorkerDied(f"worker thread {t.name} ended" + (f": {err!r}" if err else "")) from err

    # -- running --------------------------------------------------------------------------------
    def run_loop(self) -> None:
        """Default work loop: ``on_tick`` until a stop is requested, heartbeating, workers watched."""
        while not self.stopping:
            self.on_tick()
            self.check_workers()
            self.heartbeat()

    def run(self) -> int:
        """The lifecycle. Returns the exit code (0 stopped on request, 1 failed)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        code = 0
        try:
            self.set_state(State.STARTING)
            self.on_start()
            if self.state is State.STARTING and not self.stopping:
                self.set_state(State.RUNNING)
            self.run_loop()
        except Exception:
            self.log.exception("%s failed", self.name)
            self._fail()
            code = 1
        finally:
            self.request_stop()   # after a failure too: worker threads end before clean-up runs
            if self.state is not State.FAILED:
                self.set_state(State.STOPPING)
            try:
                self.on_stop()
            except Exception:
                self.log.exception("%s: clean-up failed", self.name)
                self._fail()
                code = 1
            self.row.set_parked(False)
            if self.state is not State.FAILED:
                self.set_state(State.STOPPED)
            self.log.info("%s %s", self.name, "stopped" if code == 0 else "FAILED (exit 1)")
        return code

    def _fail(self) -> None:
        if self.state is not State.FAILED:
            self.set_state(State.FAILED)


def start(prog: str, description: str, argv: list[str] | None = None,
          add_args: Callable[[argparse.ArgumentParser], None] | None = None
          ) -> tuple[Config | None, argparse.Namespace]:
    """Common start of every program: ``--profile`` (plus ``add_args(parser)``), logging, and the
    validated configuration. Returns ``(cfg, args)``, or ``(None, args)`` after logging a
    :class:`ConfigError` (the caller exits with status 2)."""
    ap = argparse.ArgumentParser(prog=f"python -m {program(prog).module}", description=description)
    ap.add_argument("--profile", help="configuration profile (default: SMTM_PROFILE or replay)")
    if add_args is not None:
        add_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return load_config(args.profile), args
    except ConfigError as e:
        logging.getLogger(f"smtm.{prog}").error("configuration error: %s", e)
        return None, args
