"""One POSIX shared-memory segment with a self-describing header.

Every table of the data plane lives in one segment named ``/smtm.<instance>.<table>``.
The segment starts with a fixed 1 KiB header:

======  =====  ==========================================================
offset  type   field
======  =====  ==========================================================
0       S8     magic ``b"SMTMSHM1"`` (written last at creation: a reader
               that sees it knows the header is complete)
8       <u4    layout version (:data:`LAYOUT_VERSION`)
12      <u4    header size in bytes (1024)
16      S16    layout hash: blake2b-128 of the canonical layout JSON
32      <i8    writer pid (the process that created or last re-attached
               as writer)
40      <i8    creation time, Unix ns UTC
48      <u8    total segment size in bytes
64      <u8    global ``seq``: bumped by the writer after every batch, so a
               poller knows in one load whether anything changed
72      <u4    length of the layout JSON
128     bytes  the layout JSON itself (up to 896 bytes), so that a reader
               that finds another layout can name both
======  =====  ==========================================================

Writers map the segment read-write; readers map it with ``PROT_READ`` so that
a reader bug cannot corrupt the engine (any store raises, from numpy as
``ValueError`` and from ``mmap`` as ``TypeError``).
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import posix_ipc

MAGIC = b"SMTMSHM1"
LAYOUT_VERSION = 3  # 2: ring control rows carry a history-rewrite counter; 3: and a row generation
HEADER_SIZE = 1024
_LAYOUT_JSON_OFFSET = 128
_LAYOUT_JSON_MAX = HEADER_SIZE - _LAYOUT_JSON_OFFSET
GLOBAL_SEQ_OFFSET = 64

HEADER_DTYPE = np.dtype(
    {
        "names": ["magic", "layout_version", "header_size", "layout_hash", "writer_pid",
                  "created_unix_ns", "total_size", "global_seq", "layout_len"],
        "formats": ["S8", "<u4", "<u4", "S16", "<i8", "<i8", "<u8", "<u8", "<u4"],
        "offsets": [0, 8, 12, 16, 32, 40, 48, GLOBAL_SEQ_OFFSET, 72],
        "itemsize": _LAYOUT_JSON_OFFSET,
    }
)


class ShmError(RuntimeError):
    """Base class of the data plane's errors."""


class LayoutMismatch(ShmError):
    """The segment exists with another layout than the caller expects.

    The message names the segment and both layouts (found and expected).
    """

    def __init__(self, name: str, found: str, expected: str):
        super().__init__(
            f"shared-memory segment {name} has another layout than expected.\n"
            f"  found:    {found}\n  expected: {expected}\n"
            f"Stop the instance and discard its segments with `smtm down` "
            f"(or start with the configuration that created it)."
        )
        self.segment = name
        self.found = found
        self.expected = expected


class SegmentNotFound(ShmError):
    """No segment of that name exists (its writer has not started yet)."""


class SegmentNotReady(ShmError):
    """The segment exists but its writer has not finished the header yet."""


@dataclass(frozen=True)
class Layout:
    """What a segment holds; its canonical JSON is hashed into the header.

    ``kind`` names the table type (e.g. ``"ring"``), ``params`` holds everything
    that sizes or shapes it (dtype description, rows, capacity, ...). Two layouts
    are compatible only when their JSON is identical.
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    size: int = 0  # payload bytes after the header

    def to_json(self) -> str:
        doc = {"kind": self.kind, "version": LAYOUT_VERSION, "size": self.size, **self.params}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def digest(self) -> bytes:
        return hashlib.blake2b(self.to_json().encode(), digest_size=16).digest()


def segment_name(instance: str, table: str) -> str:
    """``/smtm.<instance>.<table>`` (raises ValueError for names POSIX would refuse)."""
    for part, what in ((instance, "instance"), (table, "table")):
        if not part or "/" in part or len(part) > 100:
            raise ValueError(f"invalid shared-memory {what} name {part!r}")
    return f"/smtm.{instance}.{table}"


class Segment:
    """A mapped segment: ``header`` (structured scalar view) and ``buf`` (the mmap).

    Use :meth:`create_or_attach` as the writer and :meth:`attach` as a reader.
    """

    def __init__(self, name: str, mm: mmap.mmap, layout: Layout, writable: bool, created: bool):
        self.name = name
        self.mm = mm
        self.layout = layout
        self.writable = writable
        self.created = created  # True when this call created it (no data to keep)
        self.header = np.ndarray((), dtype=HEADER_DTYPE, buffer=mm, offset=0)
        # One aligned 8-byte word; a memoryview item load/store of it is a single mov on x86-64, at half
        # the cost of a numpy element access (~90 vs ~170 ns a read-modify-write). Public for the hot loops of
        # the tables over this segment (a spinning consumer's look); only the writer stores to it.
        self.global_seq_word = memoryview(mm)[GLOBAL_SEQ_OFFSET:GLOBAL_SEQ_OFFSET + 8].cast("Q")

    # -- construction ---------------------------------------------------------------
    @classmethod
    def create_or_attach(cls, name: str, layout: Layout, *, shared: bool = False) -> Segment:
        """Create the segment, or re-attach to it as its writer and keep its data.

        ``shared=True`` is for the one table written by several processes (``status``,
        one row each): the writer pid in the header is then left as the creator's.
        Raises :class:`LayoutMismatch` if it exists with another layout.
        """
        total = HEADER_SIZE + layout.size
        js = layout.to_json().encode()
        if len(js) > _LAYOUT_JSON_MAX:
            raise ValueError(f"layout description of {name} is too long ({len(js)} bytes)")
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=total)
            created = True
        except posix_ipc.ExistentialError:
            shm = posix_ipc.SharedMemory(name)
            created = False
        try:
            if not created:
                _wait_for_size(shm, name)
                if shm.size != total:
                    found = _describe_existing(shm) or f"{shm.size} bytes"
                    raise LayoutMismatch(name, found, layout.to_json())
            mm = mmap.mmap(shm.fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            shm.close_fd()
        seg = cls(name, mm, layout, writable=True, created=created)
        h = seg.header
        if created:
            h["layout_version"] = LAYOUT_VERSION
            h["header_size"] = HEADER_SIZE
            h["layout_hash"] = layout.digest()
            h["writer_pid"] = os.getpid()
            h["created_unix_ns"] = time.time_ns()
            h["total_size"] = total
            h["global_seq"] = 0
            h["layout_len"] = len(js)
            mm[_LAYOUT_JSON_OFFSET:_LAYOUT_JSON_OFFSET + len(js)] = js
            h["magic"] = MAGIC  # last: the header is complete
        else:
            seg._wait_magic()
            seg.check_layout()
            if not shared:
                h["writer_pid"] = os.getpid()
        return seg

    @classmethod
    def attach(cls, name: str, layout: Layout) -> Segment:
        """Map an existing segment read-only (``PROT_READ``).

        Raises :class:`SegmentNotFound`, :class:`SegmentNotReady` or :class:`LayoutMismatch`.
        """
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            raise SegmentNotFound(f"shared-memory segment {name} does not exist (is its writer running?)") from None
        try:
            if shm.size < HEADER_SIZE:
                raise SegmentNotReady(f"shared-memory segment {name} is still being created")
            mm = mmap.mmap(shm.fd, shm.size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            shm.close_fd()
        seg = cls(name, mm, layout, writable=False, created=False)
        if bytes(seg.header["magic"]) != MAGIC:
            seg.close()
            raise SegmentNotReady(f"shared-memory segment {name} has no complete header yet")
        seg.check_layout()
        if mm.size() != HEADER_SIZE + layout.size:
            raise LayoutMismatch(name, seg.stored_layout(), layout.to_json())
        return seg

    # -- header ---------------------------------------------------------------------
    def stored_layout(self) -> str:
        n = int(self.header["layout_len"])
        return bytes(self.mm[_LAYOUT_JSON_OFFSET:_LAYOUT_JSON_OFFSET + n]).decode(errors="replace")

    def check_layout(self) -> None:
        h = self.header
        if int(h["layout_version"]) != LAYOUT_VERSION or bytes(h["layout_hash"]) != self.layout.digest():
            found = self.stored_layout()
            self.close()
            raise LayoutMismatch(self.name, found, self.layout.to_json())

    def _wait_magic(self, timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while bytes(self.header["magic"]) != MAGIC:
            if time.monotonic() > deadline:
                raise SegmentNotReady(f"shared-memory segment {self.name} has no complete header")
            time.sleep(0.001)

    @property
    def writer_pid(self) -> int:
        return int(self.header["writer_pid"])

    @property
    def global_seq(self) -> int:
        """Global change counter (one 8-byte load)."""
        return self.global_seq_word[0]

    def bump_global_seq(self) -> None:
        """Writer only: announce that a batch of writes is complete."""
        self.global_seq_word[0] += 1

    def payload(self, dtype, shape, offset: int) -> np.ndarray:
        """A numpy view of the payload at ``offset`` bytes after the header.

        Read-only for readers (stores raise ``ValueError``).
        """
        return np.ndarray(shape, dtype=dtype, buffer=self.mm, offset=HEADER_SIZE + offset)

    def close(self) -> None:
        """Drop this process's mapping (the segment itself stays until unlinked)."""
        try:
            self.header = None  # release the exported buffers before closing the mmap
            if self.global_seq_word is not None:
                self.global_seq_word.release()
                self.global_seq_word = None
            self.mm.close()
        except (BufferError, ValueError):
            # numpy views of the payload are still alive somewhere; the OS unmaps on exit.
            pass


def _wait_for_size(shm: posix_ipc.SharedMemory, name: str, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while shm.size == 0:  # a creator between shm_open and ftruncate
        if time.monotonic() > deadline:
            raise SegmentNotReady(f"shared-memory segment {name} has size 0")
        time.sleep(0.001)


def _describe_existing(shm: posix_ipc.SharedMemory) -> str | None:
    try:
        mm = mmap.mmap(shm.fd, min(shm.size, HEADER_SIZE), mmap.MAP_SHARED, mmap.PROT_READ)
    except (OSError, ValueError):
        return None
    try:
        if mm[:8] != MAGIC or len(mm) < HEADER_SIZE:
            return None
        n = int.from_bytes(mm[72:76], "little")
        return bytes(mm[_LAYOUT_JSON_OFFSET:_LAYOUT_JSON_OFFSET + n]).decode(errors="replace")
    finally:
        mm.close()


def list_instance_objects(instance: str) -> list[str]:
    """Names of every POSIX shm segment and semaphore of an instance (Linux: /dev/shm).

    Segments are returned as ``/smtm.<instance>.<table>``, semaphores as
    ``sem:/smtm.<instance>.<name>``.
    """
    prefix = f"smtm.{instance}."
    out = []
    try:
        entries = os.listdir("/dev/shm")
    except FileNotFoundError:  # not Linux: nothing to enumerate
        return out
    for e in sorted(entries):
        if e.startswith(prefix):
            out.append("/" + e)
        elif e.startswith("sem." + prefix):
            out.append("sem:/" + e[4:])
    return out


def unlink_instance(instance: str) -> list[str]:
    """Unlink every segment and semaphore of ``instance``; returns what was removed."""
    removed = []
    for obj in list_instance_objects(instance):
        try:
            if obj.startswith("sem:"):
                posix_ipc.unlink_semaphore(obj[4:])
            else:
                posix_ipc.unlink_shared_memory(obj)
            removed.append(obj)
        except posix_ipc.ExistentialError:
            pass
    return removed
