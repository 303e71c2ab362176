"""The parsed-candle cache: the same candles as parsing the CSV, a damaged entry parsed again (never an error),
an edited file parsed again."""
from __future__ import annotations

import os
import shutil

import numpy as np

from procs.market.tape import load_source_candles
from tests.helpers import DATA


def test_the_cache_returns_what_parsing_returns_and_survives_a_damaged_entry(tmp_path):
    src = sorted((DATA / "minute30").glob("KRW-BTC_*.csv.gz"))[0]
    path = tmp_path / src.name
    shutil.copy(src, path)
    cache = tmp_path / "cache"
    market, parsed = load_source_candles(path)
    assert load_source_candles(path, cache)[1].tobytes() == parsed.tobytes()     # written ...
    (entry,) = cache.glob("*.npz")
    again = load_source_candles(path, cache)                                     # ... and read back
    assert again[0] == market and again[1].tobytes() == parsed.tobytes()
    for damage in (b"", b"PK\x03\x04 not a zip"):        # a crash while writing, a torn file
        entry.write_bytes(damage)
        m, c = load_source_candles(path, cache)
        assert m == market and np.array_equal(c, parsed)
        assert entry.stat().st_size > 1000                # replaced by a good entry
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # the file changed: parsed again
    load_source_candles(path, cache)
    assert len(list(cache.glob("*.npz"))) == 2 and not list(cache.glob("*.tmp.npz"))
