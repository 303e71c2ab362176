"""Latency stamps: each stage keeps its newest samples with the time each was taken, and writes them."""
import numpy as np

from procs.runtime.config import BaseConfig, LatencyConfig, ShmConfig
from procs.runtime.stamps import LatencyLog, StageSamples


def test_a_stage_keeps_its_newest_samples_in_order():
    s = StageSamples(5)
    s.add_since(np.array([0, 0, 0]), 1000)       # 3 stamps, 1 µs each, taken at 1000 ns
    s.add(7.0, 3)                                # one frame's 3 trades
    us, at = s.values()
    assert us.tolist() == [1.0, 1.0, 7.0, 7.0, 7.0] and at[:2].tolist() == [1000, 1000] and s.n == 6
    s.add_since(np.arange(8) * 1000, 10_000)     # more than it holds: the newest 5 stay
    assert s.values()[0].tolist() == [7.0, 6.0, 5.0, 4.0, 3.0] and s.n == 14
    s.add(1.0)
    assert s.values()[0].tolist() == [6.0, 5.0, 4.0, 3.0, 1.0]


def test_off_by_default_and_written_when_on(tmp_path):
    off = LatencyLog(BaseConfig("replay", "x", tmp_path, ("KRW-BTC",), ShmConfig()), "ingest")
    assert not off.enabled and off.write() is None
    log = LatencyLog(BaseConfig("replay", "x", tmp_path, ("KRW-BTC",), ShmConfig(), LatencyConfig(samples=4)),
                     "ingest")
    log.stage("frame -> candle in shm").extend([1.0, 2.0])
    with np.load(log.write()) as z:
        assert z["frame -> candle in shm"].tolist() == [1.0, 2.0] and len(z["frame -> candle in shm@"]) == 2
    assert log.path == tmp_path / "latency" / "ingest.npz"
