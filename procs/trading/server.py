"""The trader's command server: a Unix-domain stream socket (``run/<instance>/trader.sock``, mode 0600)
served by one thread with :mod:`selectors` and non-blocking sockets (protocol: :mod:`.protocol`; the
socket file itself: binding, stale files, peer credentials, in :mod:`.unixsock`).

Thread model: every command is answered on the server thread, which calls the engine's ``handler``
there (the engine serializes with its own lock; a slow handler delays every client); only
``EVENT.SUBSCRIBE`` is answered by the server itself and never reaches the handler. :meth:`publish`
is called from the engine's thread: it encodes the event once, appends it to each matching
subscriber's bounded queue and wakes the selector through a socketpair; it never waits on a socket.
A subscriber whose queue is full is dropped (closed, counted in ``dropped_subscribers``).
"""
from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import deque
from pathlib import Path

from . import protocol as proto
from .protocol import EVENTS, Command, CommandError, ProtocolError
from .unixsock import SUN_PATH_MAX, ServerAlreadyRunning, check_socket_path, listen_unix, peer_of, unlink_if_ours

__all__ = ["CommandServer", "ServerAlreadyRunning", "SUN_PATH_MAX", "check_socket_path", "listen_unix", "peer_of"]

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
HIGH_WATER = 256 * 1024   #: bytes buffered for one connection before it is read no more / fed no more events
EVICT_IDLE_S = 1.0        #: when every slot is taken, a command connection silent this long gives its slot up
IDLE_TIMEOUT_S = 60.0     #: a command connection (not a subscriber) silent this long is closed
_LISTEN, _WAKE = object(), object()


class _Conn:
    """One client connection (owned by the server thread; ``queue``/``prefixes`` under the server lock)."""
    __slots__ = ("sock", "peer", "dec", "wbuf", "mask", "last_seq", "prefixes", "queue", "ev_seq", "closed", "pending",
                 "active",
                 "closing")

    def __init__(self, sock: socket.socket, peer: str, max_frame: int):
        self.sock, self.peer, self.dec, self.wbuf = sock, peer, proto.FrameDecoder(max_frame), bytearray()
        self.mask, self.last_seq, self.ev_seq = READ, -1, 0
        self.prefixes: tuple[str, ...] | None = None   # event type prefixes (None: all)
        self.queue: deque[bytes] = deque()             # event heads not yet in wbuf
        self.closed = self.closing = False
        self.pending: deque[bytes] = deque()           # frames read, not answered yet (answered as the client reads)
        self.active = time.monotonic()                 # last time it sent anything

    def wants(self, type: str) -> bool:
        return self.prefixes is None or type.startswith(self.prefixes)


class CommandServer:
    """Serve ``handler`` on the Unix socket ``path``.

    ``run_id`` goes into every ACK and event; ``max_frame_bytes`` bounds an incoming frame (and each
    connection's read buffer, + 4); ``max_clients`` connections at most (more get TOO_MANY_CLIENTS);
    ``subscriber_queue`` events queued per subscriber before it is dropped. Counters (read from any
    thread): ``clients``, ``subscribers``, ``commands`` (frames answered), ``errors`` (error ACKs sent),
    ``dropped_subscribers``."""

    def __init__(self, path: Path, handler: proto.Handler, *, run_id: str,
                 max_frame_bytes: int = proto.DEFAULT_MAX_FRAME, max_clients: int = 128, subscriber_queue: int = 4096,
                 log: logging.Logger | None = None):
        self.path = check_socket_path(path)
        self.handler, self.run_id = handler, run_id
        self.max_frame_bytes, self.max_clients, self.subscriber_queue = max_frame_bytes, max_clients, subscriber_queue
        self.log = log or logging.getLogger(__name__)
        self.commands = self.errors = self.dropped_subscribers = 0
        self._conns: dict[int, _Conn] = {}
        self._subs: set[_Conn] = set()
        self._dropped: list[_Conn] = []
        self._lock = threading.Lock()
        self._wake_pending = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ino: int | None = None
        self._refused_logged = -1e9

    @property
    def clients(self) -> int:
        return len(self._conns)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind (mode 0600, replacing a stale socket file), listen, serve on a daemon thread.
        Raises ServerAlreadyRunning (another live server answers there), OSError."""
        self._listener, self._ino = listen_unix(self.path)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, READ, _LISTEN)
        self._sel.register(self._wake_r, READ, _WAKE)
        self._thread = threading.Thread(target=self._run, name="command-server", daemon=True)
        self._thread.start()
        self.log.info("command server listening on %s (run %s)", self.path, self.run_id)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every connection and the listener, unlink the socket (if it is still ours)."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake()
        self._thread.join(timeout_s)
        self._thread = None
        unlink_if_ours(self.path, self._ino)
        self.log.info("command server on %s stopped", self.path)

    # -- events (engine thread) -----------------------------------------------------------------------------
    def publish(self, type: str, payload, symbol: str | None = None) -> int:
        """Queue event ``type`` (one of :data:`EVENTS`) for every subscriber that wants it; returns how
        many. Thread-safe, never blocks on a socket. Raises ValueError for an unknown type, TypeError
        if ``payload`` is not JSON-serialisable."""
        if type not in EVENTS:
            raise ValueError(f"unknown event type {type!r}; known: {', '.join(EVENTS)}")
        if not self._subs:
            return 0
        head = proto.event_head(type, payload, run_id=self.run_id, symbol=symbol)
        n = 0
        with self._lock:
            for c in list(self._subs):
                if not c.wants(type):
                    continue
                if len(c.queue) >= self.subscriber_queue:
                    self._subs.discard(c)
                    self._dropped.append(c)
                    self.dropped_subscribers += 1
                    continue
                c.queue.append(head)
                n += 1
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()
        return n

    def _wake(self) -> None:
        with contextlib.suppress(OSError, AttributeError):   # a wake-up is pending already (or never started)
            self._wake_w.send(b"\0")

    # -- the server thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._close_idle()
                for key, mask in self._sel.select(timeout=1.0):
                    if key.data is _LISTEN:
                        try:
                            self._accept()
                        except Exception:   # a bug must cost one client, never the server
                            self.log.exception("accepting a client failed")
                    elif key.data is _WAKE:
                        self._drain_wake()
                    else:
                        self._serve(key.data, mask)
                self._pump()
        except Exception:
            self.log.exception("command server loop failed; closing it")
        finally:
            for c in list(self._conns.values()):
                self._close(c)
            self._sel.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _close_idle(self) -> None:
        """Close command connections that sent no complete command for IDLE_TIMEOUT_S (a half frame
        trickled byte by byte counts as silence)."""
        now = time.monotonic()
        for c in [c for c in self._conns.values() if c not in self._subs and now - c.active > IDLE_TIMEOUT_S]:
            self._close(c)

    def _evict(self) -> bool:
        """Every slot is taken: give one up so that a KILL can always get in. In this order: the command
        connection that has sent no complete command for longest (at least EVICT_IDLE_S) and holds nothing
        half-sent; else the oldest event subscriber (events may be lost, snapshots recover); else the
        connection silent longest — after running the commands it had sent completely (a pipelined KILL
        is executed, not dropped). False only when nothing may go (every connection busy right now)."""
        now = time.monotonic()
        conns = list(self._conns.values())
        quiet = [c for c in conns if c not in self._subs and now - c.active >= EVICT_IDLE_S]
        clean = [c for c in quiet if not c.pending and not c.dec.pending]
        subs = [c for c in conns if c in self._subs]
        c = min(clean, key=lambda c: c.active) if clean else min(subs, key=lambda c: c.active) if subs \
            else min(quiet, key=lambda c: c.active) if quiet else None
        if c is None:
            return False
        while c.pending:        # commands it sent completely are executed; their answers are not awaited
            self._dispatch(c, c.pending.popleft())
        self.log.warning("evicted %s (%s, no command for %.0f s) to admit a new client: %d clients", c.peer,
                         "subscriber" if c in self._subs else "command connection", now - c.active, len(conns))
        self._close(c)
        return True

    def _serve(self, c: _Conn, mask: int) -> None:
        try:
            if mask & WRITE and not c.closed:
                self._flush(c)
                if c.pending and not c.closed:
                    self._work(c)
            if mask & READ and not c.closed:
                self._read(c)
        except Exception:   # a bug must cost one connection, never the server
            self.log.exception("connection from %s failed; closing it", c.peer)
            self._close(c)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self.log.warning("accept failed: %s", e)
                return
            sock.setblocking(False)
            if len(self._conns) >= self.max_clients and not self._evict():
                self.errors += 1
                ack = proto.make_ack(self.run_id, seq=None, symbol=None, ok=False,
                                     error=("TOO_MANY_CLIENTS", f"{self.max_clients} clients are connected already"))
                now = time.monotonic()
                if now - self._refused_logged >= 10.0:   # one line per 10 s, not one per refused client
                    self._refused_logged = now
                    self.log.warning("refused a client from %s: %d clients connected", peer_of(sock),
                                     len(self._conns))
                with contextlib.suppress(OSError):
                    sock.send(proto.encode(ack), socket.MSG_NOSIGNAL)
                sock.close()
                continue
            c = _Conn(sock, peer_of(sock), self.max_frame_bytes)
            self._conns[sock.fileno()] = c
            self._sel.register(sock, READ, c)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(c.dec.room())
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:   # gone (maybe mid-frame: what it had sent is dropped)
            self._close(c)
            return
        try:
            bodies = c.dec.feed(data)
        except ProtocolError as e:
            self._send_error(c, e, None, None)
            c.closing = True
            self._flush(c)
            return
        if bodies:
            c.active = time.monotonic()   # a complete command: a trickle of bytes does not count
        c.pending.extend(bodies)
        self._work(c)

    def _work(self, c: _Conn) -> None:
        """Answer pending frames while the client takes the answers (a client that pipelines commands and
        never reads costs at most HIGH_WATER bytes of answers, and is read no more meanwhile)."""
        while c.pending and len(c.wbuf) < HIGH_WATER:
            self._dispatch(c, c.pending.popleft())
        self._flush(c)

    def _send_error(self, c: _Conn, e: CommandError, seq: int | None, symbol: str | None) -> None:
        self.errors += 1
        c.wbuf += proto.encode(proto.make_ack(self.run_id, seq=seq, symbol=symbol, ok=False, error=(e.code, e.message)))

    def _dispatch(self, c: _Conn, body: bytes) -> None:
        """Answer one frame body with one ACK (appended to the connection's write buffer)."""
        self.commands += 1
        msg = None
        try:
            msg = proto.decode(body)
            proto.validate_header(msg)
            if msg["seq"] <= c.last_seq:
                raise ProtocolError("OUT_OF_ORDER", f"seq {msg['seq']} after {c.last_seq}: seq must increase "
                                                    f"on a connection; not executed")
            c.last_seq = msg["seq"]
            proto.check_type(msg["type"])
            cmd = Command(msg["type"], float(msg["ts"]), msg["run_id"], msg["symbol"], msg["seq"], msg["payload"],
                          c.peer)
            payload = self._execute(c, cmd)
            ack = proto.make_ack(self.run_id, seq=cmd.seq, symbol=cmd.symbol, ok=True, payload=payload)
            c.wbuf += proto.encode(ack)
        except CommandError as e:
            self._send_error(c, e, *proto.echo(msg))
        except Exception as e:
            self.log.exception("command %s from %s failed", msg.get("type") if isinstance(msg, dict) else "?", c.peer)
            self._send_error(c, CommandError("INTERNAL", f"{type(e).__name__}: {e}"), *proto.echo(msg))

    def _execute(self, c: _Conn, cmd: Command):
        return self._subscribe(c, cmd) if cmd.type == "EVENT.SUBSCRIBE" else self.handler(cmd)

    def _subscribe(self, c: _Conn, cmd: Command) -> dict:
        types = cmd.payload.get("types")
        if types is not None and (not isinstance(types, list) or not all(isinstance(t, str) for t in types)):
            raise CommandError("INVALID", "payload 'types' must be a list of event type prefixes")
        for t in types or ():
            if not any(e.startswith(t) for e in EVENTS):
                raise CommandError("INVALID", f"no event type starts with {t!r:.60}; known: {', '.join(EVENTS)}")
        with self._lock:
            c.prefixes = tuple(types) if types else None
            self._subs.add(c)
        return {"types": list(c.prefixes) if c.prefixes else None, "queue": self.subscriber_queue}

    def _pump(self) -> None:
        """Move queued events into the subscribers' write buffers (up to HIGH_WATER bytes) and send;
        close the subscribers publish() dropped."""
        with self._lock:
            self._wake_pending = False
            dropped, self._dropped = self._dropped, []
            fed = [c for c in self._subs if c.queue and len(c.wbuf) < HIGH_WATER]
            for c in fed:
                while c.queue and len(c.wbuf) < HIGH_WATER:
                    c.wbuf += proto.event_frame(c.queue.popleft(), c.ev_seq)
                    c.ev_seq += 1
        for c in dropped:
            self.log.warning("dropped event subscriber %s: %d events queued unread", c.peer, len(c.queue))
            self._close(c)
        for c in fed:
            if not c.closed:
                self._serve(c, WRITE)

    def _flush(self, c: _Conn) -> None:
        while c.wbuf:
            try:
                n = c.sock.send(c.wbuf, socket.MSG_NOSIGNAL)
            except BlockingIOError:
                break
            except OSError:
                self._close(c)
                return
            del c.wbuf[:n]
        if c.closing:   # after a fatal protocol error: the ACK went out as far as it could
            self._close(c)
            return
        mask = (READ if len(c.wbuf) < HIGH_WATER and not c.pending else 0) | (WRITE if c.wbuf else 0)
        if mask != c.mask:
            c.mask = mask
            self._sel.modify(c.sock, mask, c)

    def _close(self, c: _Conn) -> None:
        if c.closed:
            return
        c.closed = True
        with self._lock:
            self._subs.discard(c)
        self._conns.pop(c.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(c.sock)
        c.sock.close()
