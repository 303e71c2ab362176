"""Remote observers for the benchmarks: ``python -m bench.ws_clients URL N SECONDS MARKETS OUT.json`` opens ``N``
WebSocket clients on the gateway's ``/ws/market`` (in one asyncio process, as a browser tab each), client ``i``
subscribing to three of ``MARKETS`` (comma-separated) on the 30-minute candles, reads everything for ``SECONDS``
and writes per client: messages received, messages/s, whether the gateway closed it (and the code). They read
as fast as they can: the cost measured is the gateway's fan-out, not a slow reader's."""
from __future__ import annotations

import asyncio
import json
import sys
import time

import websockets


async def _client(url: str, markets: list[str], seconds: float, out: dict) -> None:
    out.update(messages=0, closed=None)
    try:
        async with websockets.connect(url, max_size=1 << 22) as ws:
            await ws.send(json.dumps({"subscribe": [{"market": m, "tf": "30m"} for m in markets]}))
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(ws.recv(), left)
                except TimeoutError:
                    break
                out["messages"] += 1
    except websockets.ConnectionClosed as e:
        out["closed"] = e.rcvd.code if e.rcvd else -1
    out["per_s"] = out["messages"] / seconds


async def main(url: str, n: int, seconds: float, markets: list[str], path: str) -> None:
    results = [{} for _ in range(n)]
    picks = [[markets[(i + k) % len(markets)] for k in range(3)] for i in range(n)]
    await asyncio.gather(*(_client(url, picks[i], seconds, results[i]) for i in range(n)))
    with open(path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    url, n, seconds, markets, path = sys.argv[1:6]
    asyncio.run(main(url, int(n), float(seconds), markets.split(","), path))
