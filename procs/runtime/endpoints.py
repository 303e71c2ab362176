"""Where a server of this instance listens: published in the run directory, read by its clients.

A server binds port 0 (or its configured port), and once it listens writes
``<run dir>/<name>.json`` = ``{"host", "port", "pid"}`` atomically (write, then rename). Clients
read the file each time they connect, so a server restarted on another port is found again, and
two instances (or two test suites) never race for a port number. The replay exchange is the
``exchange`` endpoint; ``upbit.ws_url = "auto"`` and ``upbit.rest_url = "auto"`` resolve to it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class EndpointUnavailable(RuntimeError):
    """The server has not published its address (not started yet, or stopped)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    pid: int

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.host}:{self.port}"


def endpoint_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"{name}.json"


def publish(run_dir: Path, name: str, host: str, port: int) -> Path:
    """Server: announce ``host:port`` (atomically). Returns the file's path."""
    path = endpoint_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"host": host, "port": port, "pid": os.getpid()}))
    os.replace(tmp, path)
    return path


def withdraw(run_dir: Path, name: str) -> None:
    """Server, on a clean stop: remove the file if it is still ours."""
    path = endpoint_path(run_dir, name)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def lookup(run_dir: Path, name: str) -> Endpoint:
    """The published address. Raises :class:`EndpointUnavailable`."""
    path = endpoint_path(run_dir, name)
    try:
        doc = json.loads(path.read_text())
        return Endpoint(str(doc["host"]), int(doc["port"]), int(doc.get("pid", 0)))
    except FileNotFoundError:
        raise EndpointUnavailable(f"{name} has not published its address in {path} (is it running?)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EndpointUnavailable(f"{path}: unreadable ({e})") from None


class UpbitUrls:
    """The Upbit base URLs of ``[upbit]``: fixed ones as configured, ``"auto"`` ones resolved to
    this instance's replay exchange at each call (raises :class:`EndpointUnavailable` until it
    has published its address)."""

    def __init__(self, ws_url: str, rest_url: str, run_dir: Path):
        self._ws, self._rest, self.run_dir = ws_url, rest_url, Path(run_dir)

    def ws(self) -> str:
        if self._ws != "auto":
            return self._ws
        return lookup(self.run_dir, "exchange").ws + "/websocket/v1"

    def rest(self) -> str:
        if self._rest != "auto":
            return self._rest.rstrip("/")
        return lookup(self.run_dir, "exchange").http

    def describe(self) -> str:
        return self._ws if self._ws != "auto" else f"the replay exchange ({endpoint_path(self.run_dir, 'exchange')})"
