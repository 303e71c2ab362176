"""THE list of programs and of wake consumers — the one place that names them.

``supervisord.conf`` has one ``[program:<name>]`` section per entry of :data:`PROGRAMS` (a test
checks the file against this list: name, module, priority), the ``status`` table has one row per
program in this order (:data:`STATUS_ROWS`, part of its layout), ``smtm up`` waits for them and
``smtm status`` lists them, and :data:`WAKE_CONSUMERS` says which producer posts which
consumer's semaphore. Standard library only, so that everything may import it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Program:
    """One supervised program: ``python -m <module>``, started in ``priority`` order."""
    name: str
    module: str
    priority: int
    description: str
    replay_only: bool = False   #: started only when the replay exchange is enabled (the replay profile)


PROGRAMS: tuple[Program, ...] = (
    Program("exchange", "procs.replay", 10, "the Upbit-compatible replay exchange (replay profile only)",
            replay_only=True),
    Program("ingest", "procs.ingest", 20, "Upbit trades -> candles.<tf>"),
    Program("indicator", "procs.indicator", 30, "candles -> indicators.<tf> and the signals table"),
    Program("symbols", "procs.symbols", 40, "safety filter and 24 h top-N ranking -> the symbols table"),
    Program("trader", "procs.trader", 50, "the engine: strategy, risk, orders, ledger, command socket"),
    Program("gateway", "procs.gateway", 60, "read-only HTTP access to shared memory for remote observers"),
    Program("monitor", "procs.monitor", 90, "read-only VisPy view; may die at any time"),
)

#: Row order of the ``status`` table.
STATUS_ROWS: tuple[str, ...] = tuple(p.name for p in PROGRAMS)

#: producer -> the consumers it wakes after publishing (each parks on its own semaphore).
#: Ingest wakes the indicator and the trader on every trade (the trader takes candle closes from the trades
#: and computes the indicators it decides on itself, so nothing else needs to wake it).
WAKE_CONSUMERS: dict[str, tuple[str, ...]] = {"ingest": ("indicator", "trader")}


def program(name: str) -> Program:
    """The program called ``name``; raises KeyError naming the known ones."""
    for p in PROGRAMS:
        if p.name == name:
            return p
    raise KeyError(f"unknown program {name!r}; programs: {', '.join(STATUS_ROWS)}")
