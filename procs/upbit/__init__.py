"""The Upbit venue adapter: every wire format stays in here (as nautilus keeps a venue's in its
adapter package). Field maps DEFAULT ↔ SIMPLE (:mod:`.fields`), typed parsing into the market's
types (:mod:`.parsing`), the REST client and its rate limiter (:mod:`.rest`), the WebSocket
session (:mod:`.websocket`: send limiter, backoff, keep-alive, stall detection) and the frame
recorder (:mod:`.recorder`). May import ``procs.market`` (its types), ``procs.runtime`` and ``shm``."""
