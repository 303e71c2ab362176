"""Unix-domain socket *files* for the trader's command server (:mod:`.server`): everything specific to
the OS object behind ``run/<instance>/trader.sock``, kept apart from the serving loop.

- :func:`check_socket_path`: refuse a path longer than ``sun_path`` allows (107 bytes + NUL) up front,
  with a hint, instead of a bare ``OSError`` from ``bind``;
- :func:`listen_unix`: create the parent folder, clear a *stale* socket file (one nobody answers on,
  left by a run that crashed), bind under ``umask 0177`` so the file is born mode 0600 (no window where
  another user may connect), listen, and report the file's inode so that only its owner unlinks it;
  a live server on the path, or a path that is not a socket, raises :class:`ServerAlreadyRunning`;
- :func:`peer_of`: the connecting process as ``"pid 1234 uid 1000"`` from ``SO_PEERCRED`` (for the
  audit trail).

Nothing here knows the wire protocol.
"""
from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

SUN_PATH_MAX = 107        #: bytes of a Unix socket path (sun_path holds 108 with the NUL)


class ServerAlreadyRunning(RuntimeError):
    """Another live server answers on the socket path (or the path is not a socket)."""


def check_socket_path(path: Path | str) -> Path:
    """``path`` as a Path; raises ValueError if it is too long for a Unix socket."""
    n = len(os.fsencode(path))
    if n > SUN_PATH_MAX:
        raise ValueError(f"socket path {path} is {n} bytes; Unix sockets allow {SUN_PATH_MAX} (use a shorter "
                         f"SMTM_RUN_DIR)")
    return Path(path)


def peer_of(sock: socket.socket) -> str:
    """``"pid 1234 uid 1000"`` from SO_PEERCRED (``"unknown"`` where the OS does not say)."""
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError):
        return "unknown"
    return f"pid {pid} uid {uid}"


def clear_stale(path: Path) -> None:
    """Unlink a socket file nobody answers on; raise ServerAlreadyRunning if someone does (or if
    ``path`` is not a socket, or whether someone answers cannot be told)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerAlreadyRunning(f"{path} exists and is not a socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)   # left by a run that crashed
            return
        except OSError as e:
            raise ServerAlreadyRunning(f"{path}: cannot tell whether another server answers there ({e}); "
                                       f"not replacing it") from None
    raise ServerAlreadyRunning(f"another trader already answers on {path} (is this instance's trader running "
                               f"twice? `smtm status`)")


def listen_unix(path: Path) -> tuple[socket.socket, int]:
    """A non-blocking listening socket at ``path`` (parents created), mode 0600 before it listens,
    replacing a stale socket file; returns it and the file's inode (so that only its owner unlinks it).
    Raises ServerAlreadyRunning, OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old, bound = os.umask(0o177), False   # born 0600: no window where others may connect
    try:
        sock.bind(str(path))
        bound = True
        os.chmod(path, 0o600)
        ino = os.stat(path).st_ino
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        if bound:
            path.unlink(missing_ok=True)
        raise
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock, ino


def unlink_if_ours(path: Path, ino: int | None) -> bool:
    """Unlink ``path`` if it is still the file with inode ``ino`` (not one a newer server bound since);
    returns whether it did."""
    try:
        if os.stat(path).st_ino != ino:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True
