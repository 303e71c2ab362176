"""The gateway process (wiring only): uvicorn serves :func:`procs.gateway.app.make_app` on a worker thread while
the process's own loop beats its status row; the bound address is published in ``run/<instance>/gateway.json``.
A port already in use stops start-up with an error naming ``gateway.port``."""
from __future__ import annotations

import logging
import os
import threading

import uvicorn

from shm.status import State

from ..market.surge import SurgeRule
from ..runtime.config import BaseConfig, GatewayConfig
from ..runtime.endpoints import publish, withdraw
from ..runtime.process import Process, start
from ..views.gateway_source import ShmGatewaySource
from .app import LOCAL_HOSTS, make_app

#: the environment variable that holds the commands' token (never a file: config files are read by many)
TOKEN_ENV = "SMTM_GATEWAY_TOKEN"
MIN_TOKEN_CHARS = 16
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class GatewayProcess(Process):
    name = "gateway"

    def __init__(self, base: BaseConfig, cfg: GatewayConfig, **kw):
        token = os.environ.get(TOKEN_ENV) or None     # checked before anything is opened
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{TOKEN_ENV}: a token of at least {MIN_TOKEN_CHARS} characters, or none "
                             f"(commands stay off)")
        if token is not None and cfg.host not in LOOPBACK:
            raise ValueError(f"gateway.host = {cfg.host!r} with {TOKEN_ENV} set: the token would cross the network "
                             f"in clear text; keep the gateway on loopback and reach it through an SSH tunnel")
        super().__init__(base, **kw)
        self.cfg = cfg
        self.source = ShmGatewaySource(base)
        self.commands_on = token is not None
        self.app = make_app(self.source, max_candles=cfg.max_candles, title=f"SMTM-NG gateway [{base.instance}]",
                            trader_socket=base.run_dir / "trader.sock", token=token, client_queue=cfg.client_queue,
                            hosts=tuple(dict.fromkeys((*LOCAL_HOSTS, cfg.host))),
                            poll_s=cfg.poll_s, surge=(cfg.surge_tf or base.finest_timeframe, SurgeRule(
                                cfg.surge_window, cfg.surge_baseline, cfg.surge_min_return_pct,
                                cfg.surge_min_value_ratio)))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=cfg.host, port=cfg.port, log_level="warning",
                                                    lifespan="off", access_log=False, ws_max_size=1 << 16,
                                                    proxy_headers=False, server_header=False,
                                                    ws_ping_interval=cfg.ping_s, ws_ping_timeout=cfg.ping_s))
        self.port = 0
        self._thread: threading.Thread | None = None

    def on_start(self) -> None:
        # on a thread of its own uvicorn installs no signal handlers: SIGTERM stays the process's (request_stop)
        self._thread = self.start_worker(self.server.run, "http")
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"gateway.port = {self.cfg.port}: the server did not start on "
                                   f"{self.cfg.host}:{self.cfg.port} (in use?)")
            self.idle(0.02)
            if self.stopping:
                return
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        publish(self.base.run_dir, "gateway", self.cfg.host, self.port)
        self.log.info("serving http://%s:%d (API at /docs); commands %s", self.cfg.host, self.port,
                      f"accepted with the token of {TOKEN_ENV}" if self.commands_on else f"off ({TOKEN_ENV} not set)")
        self.on_beat()
        self.set_state(State.RUNNING)

    def on_tick(self) -> None:
        self.idle(self.heartbeat_s)

    def on_beat(self) -> None:
        hub = self.app.state.hub
        n = sum(len(c) for c in hub.clients.values())
        self.row.msgs_out, self.row.dropped = sum(hub.sent.values()), hub.dropped
        self.row.detail = f"http://{self.cfg.host}:{self.port}/docs clients={n}"[:88]

    def on_stop_requested(self) -> None:
        self.server.should_exit = True

    def on_stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        withdraw(self.base.run_dir, "gateway")
        self.source.close()


def main(argv: list[str] | None = None) -> int:
    cfg, _ = start("gateway", "read-only HTTP access to shared memory for remote observers", argv)
    if cfg is None:
        return 2
    try:
        proc = GatewayProcess(cfg.base, cfg.gateway)
    except ValueError as e:      # a bad token: named, and nothing served
        logging.getLogger("smtm.gateway").error("%s", e)
        return 2
    return proc.run()


if __name__ == "__main__":
    raise SystemExit(main())
