"""The seqlock: the one write section and the one consistent-read loop of the data plane.

Every table guards its data with sequence words (``uint64`` in the segment): a ring has one per
row, the status table one per process row, a snapshot table (``symbols``, ``signals``) one for
the whole table. :class:`Seqlock` wraps such a set of words and is the only code that touches
them::

    writer: with lock.section(i): <stores>     seq += 1 (odd) -> stores -> seq += 1 (even)
    reader: lock.read(i, copy)                 s1 = seq (retry while odd) -> copy() -> s2 = seq;
                                               retry unless s1 == s2

Rules for writers: convert and validate everything **before** the section, so the section holds
only stores of ready values. Should a store raise anyway, the section is still closed (the word
made even again) so that no reader waits forever on it; that is also what
:meth:`Seqlock.repair` does for a word left odd by a writer killed mid-write.

Memory ordering. This relies on x86-64 (TSO): stores are not reordered with other stores, loads
are not reordered with other loads, and every store/load of an aligned 8-byte word used here (a
memoryview item over the numpy view of the words: half the cost of a numpy element, ~65 vs ~170 ns
a read-modify-write) is one ``mov`` issued from a separate C call, so neither the compiler nor the CPU can
move a data store before the odd ``seq`` store or after the even one, nor a data load outside
the two ``seq`` loads of a reader. On weakly ordered CPUs (ARM, POWER) the writer would need a
release fence between the data and the even ``seq`` store (and after the odd one), and the reader
acquire fences after each ``seq`` load; pure Python cannot issue those, so this module would need
a small C helper there.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from .segment import ShmError

T = TypeVar("T")


class SeqlockTimeout(ShmError):
    """A consistent read did not succeed within the retry budget (a writer died mid-write, or
    writes are so frequent that the copy never fits between two of them)."""


class _Section:
    """One write section (a context manager) over :meth:`Seqlock.begin` / :meth:`Seqlock.end`."""

    __slots__ = ("_lock", "_i", "_s")

    def __init__(self, lock: Seqlock, i: int):
        self._lock = lock
        self._i = i

    def __enter__(self) -> None:
        self._s = self._lock.begin(self._i)

    def __exit__(self, *exc) -> bool:
        self._lock.end(self._i, self._s)
        return False


class Seqlock:
    """The sequence words of one table: ``words`` is a ``uint64`` view of shape ``(n,)`` into its
    segment (strided is fine: each element is one aligned 8-byte word). ``name`` is used in error
    messages. ``enabled=False`` (readers only) copies without the protocol: for the stress test
    that shows the protocol is needed, never for real use."""

    __slots__ = ("words", "name", "enabled", "_w")

    def __init__(self, words: np.ndarray, name: str, enabled: bool = True):
        self.words = words
        self.name = name
        self.enabled = enabled
        self._w = memoryview(words)   # the same (strided) words; item access for the hot paths

    def section(self, i: int = 0) -> _Section:
        """Writer: ``with lock.section(i): ...`` makes word ``i`` odd for the stores inside."""
        return _Section(self, i)

    def begin(self, i: int) -> int:
        """Writer, hot path: open section ``i`` (word made odd); returns the token for :meth:`end`.
        Use as ``s = lock.begin(i)`` / ``try: <stores> finally: lock.end(i, s)`` — the same section
        as :meth:`section` without a context-manager object per write."""
        w = self._w
        s = w[i]
        w[i] = s + 1
        return s

    def end(self, i: int, s: int) -> None:
        """Writer: close the section opened by :meth:`begin` (word made even)."""
        self._w[i] = s + 2

    def read(self, i: int, copy: Callable[[], T], max_spins: int = 100_000, what: str = "") -> T:
        """Reader: ``copy()`` taken while word ``i`` stayed even and unchanged.

        ``copy`` must return a copy (not a view) and may raise (its exception propagates).
        Raises :class:`SeqlockTimeout` after ``max_spins`` failed attempts."""
        if not self.enabled:
            return copy()
        words = self._w
        for _ in range(max_spins):
            s1 = words[i]
            if s1 & 1:
                continue
            out = copy()
            if words[i] == s1:
                return out
        raise SeqlockTimeout(f"{self.name}{' ' + what if what else ''}: no consistent read in {max_spins} attempts")

    def repair(self, i: int | None = None) -> int:
        """Writer, at start: make every word (or only word ``i``, in a table whose words have
        different writers) left odd by a writer killed mid-write even again. Returns how many were
        repaired."""
        torn = np.flatnonzero(self.words & 1) if i is None else [i] if int(self.words[i]) & 1 else []
        for k in torn:
            self.words[k] += 1
        return len(torn)
