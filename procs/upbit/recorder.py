"""The frame recorder: every received WebSocket frame to rotating compressed files.

Format (read back by the replay exchange, ``procs.replay.recording``): gzip-compressed JSON
Lines, one frame per line, ``{"t": <receive time, Unix ms>, "f": "<frame as UTF-8 text>"}``
(``"b"`` with base64 for a frame that is not valid UTF-8). Files rotate every ``rotate_s``
seconds or ``rotate_mb`` of frame text, named ``frames-<UTC start>-<n>.jsonl.gz``. The writer
runs on its own thread behind a queue, so recording costs the receive path one queue put.
"""
from __future__ import annotations

import base64
import gzip
import json
import logging
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("smtm.recording")


class Recorder:
    """Background writer of rotating ``.jsonl.gz`` files. ``write`` is thread-safe and cheap."""

    def __init__(self, directory: Path, rotate_s: float = 600.0, rotate_mb: float = 64.0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rotate_s = rotate_s
        self.rotate_bytes = int(rotate_mb * 1e6)
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.files: list[Path] = []
        self.frames = 0
        self._stop = object()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def write(self, recv_ms: int, frame: bytes | str) -> None:
        self.q.put((recv_ms, frame))

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush everything queued and close the current file."""
        self.q.put(self._stop)
        self._thread.join(timeout=timeout_s)

    def _open(self, n: int):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.dir / f"frames-{stamp}-{n:04d}.jsonl.gz"
        self.files.append(path)
        log.info("recording frames to %s", path)
        return gzip.open(path, "wt", compresslevel=6), time.monotonic(), 0

    def _run(self) -> None:
        n = 0
        f, opened, size = self._open(n)
        try:
            while True:
                item = self.q.get()
                if item is self._stop:
                    return
                recv_ms, frame = item
                if isinstance(frame, bytes):
                    try:
                        rec = {"t": recv_ms, "f": frame.decode("utf-8")}
                    except UnicodeDecodeError:
                        rec = {"t": recv_ms, "b": base64.b64encode(frame).decode()}
                else:
                    rec = {"t": recv_ms, "f": frame}
                line = json.dumps(rec, separators=(",", ":"))
                f.write(line + "\n")
                size += len(line)
                self.frames += 1
                if size >= self.rotate_bytes or time.monotonic() - opened >= self.rotate_s:
                    f.close()
                    n += 1
                    f, opened, size = self._open(n)
        finally:
            f.close()
