"""The replay exchange, walled off: an Upbit-compatible server on loopback that replays real
recorded data (a test and demo harness, not part of the engine). Nothing outside this package
imports it (an import-linter contract); it runs as ``python -m procs.replay``.

:mod:`.server` (the application and its routes), :mod:`.fanout` (the replay clock and the
fan-out to subscribers), :mod:`.protocol` (Upbit's WebSocket protocol), :mod:`.rest` (Upbit's
REST quotation API), :mod:`procs.market.tape` (trades synthesized from real candles), :mod:`.recording`
(recordings read back), :mod:`.faults` (fault injection and Upbit's REST limits).
"""
