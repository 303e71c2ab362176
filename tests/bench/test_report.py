"""The benchmark report (bench/report.py): synthetic figures of every group, samples included, give report.md with
every group's rows in well-formed tables and a non-empty PNG per plot; the conftest's JSON conversion thins the
samples and keeps the file plain JSON."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from bench import report
from bench.conftest import plain

PNG = b"\x89PNG\r\n\x1a\n"
LOAD = {"load1_before": 0.61, "load1_after": 0.74, "cpu_busy_pct": 57.3, "test_s": 2.4}
MACHINE = {"cpu": "Test CPU @ 2.0GHz", "cores": 2, "cores_usable": 2, "memory": "3.8 GiB",
           "kernel": "Linux 6.1 x86_64", "python": "CPython 3.11.9", "libraries": {"numpy": "2.2.6", "pyzmq": "27.3.0"},
           "date": "2026-11-24 10:00 UTC", "git_commit": "abc1234", "load_start": [0.5, 0.6, 0.7],
           "load_end": [0.8, 0.7, 0.7]}


def _lat(rng, scale: float, n: int = 3000) -> dict:
    s = rng.lognormal(np.log(scale), 0.6, n)
    return {"p50_us": float(np.percentile(s, 50)), "p99_us": float(np.percentile(s, 99)),
            "p999_us": float(np.percentile(s, 99.9)), "max_us": float(s.max()), "n": n, "samples_us": s}


def synthetic() -> dict[str, dict]:
    """One run's RESULTS with entries of every group, the old ungrouped keys among them."""
    rng = np.random.default_rng(7)
    r: dict[str, dict] = {}
    for m, f in (("quiet", 1.0), ("CPU hog on one core", 30.0)):
        for t, base in (("ring, adaptive spin-then-park", 3.0), ("pyzmq PUB/SUB ipc://", 15.0)):
            r[f"{t} [{m}]"] = {"group": "wake", **_lat(rng, base * f), "load": LOAD}
        s = _lat(rng, 9.0 * f)
        del s["samples_us"], s["p999_us"]
        r[f"ring, semaphore wake [{m}]"] = {**s, "load1": 0.7}                  # ungrouped, percentiles only
    r["copy"] = {"median_us": 2.1, "load": LOAD}                                 # ungrouped snapshot
    r["json"] = {"median_us": 203.0}
    r["pickle"] = {"group": "snapshot", "label": "pickle.loads (protocol 5)", "median_us": 61.0, "bytes": 19000}
    stages = ("frame -> candle in shm", "candle -> indicator values", "frame -> trader decision")
    for mon in (False, True):
        for rate in (100, 1000, 10000):
            r[f"e2e {rate}/s, monitor {mon}"] = {
                "group": "e2e", "rate_target": rate, "rate_sustained": rate * 0.98, "duration_s": 30,
                "monitor": "on" if mon else "off", "load": LOAD,
                "stages": {st: _lat(rng, (i + 1) * 20 * (1 + rate / 3000) * (1.3 if mon else 1), 2000)
                           for i, st in enumerate(stages)}}
    r["replay full speed"] = {"group": "throughput", "label": "replay of 12 markets, speed 0", "wall_s": 14.6,
                              "trades": 305844, "trades_per_s": 20948.0,
                              "cpu_s": {"ingest": 10.9, "indicator": 8.0, "exchange": 5.8}}
    r["replay paced"] = {"group": "throughput", "wall_s": 60.0, "trades": 60000, "trades_per_s": 1000.0}
    r["monitor window"] = {"group": "monitor", "fps": 59.8, "frame_ms": {"p50": 4.1, "p99": 9.8, "max": 31.0},
                           "mode": "window", "rate": 1000}
    per_market = {"candles.30m": 131072, "indicators.30m": 229376, "trades": 196608, "status": 0}
    for n in (10, 100, 400):                                      # bench/test_scale.py's shape
        r[f"scale, {n} markets"] = {
            "group": "scale", "markets": n, "indicator_updates_per_s": 974000 / (1 + n / 500),
            "ingest_trades_per_s": 60000 / (1 + n / 300), "pipeline_trades_per_s": 40000 / (1 + n / 300),
            "shm_bytes": sum(per_market.values()) * n + 8192, "shm_bytes_allocated_after_pipeline": 30000 * n,
            "shm_bytes_by_table": {t: b * n or 8192 for t, b in per_market.items()},
            "shm_bytes_per_market_per_timeframe": per_market}
    r["scale 1000 markets"] = {"group": "scale", "markets": 1000, "ingest_trades_per_s": 9000.0,
                               "shm_bytes_per_market_per_timeframe": 65536,  # a scalar, and a table of its own
                               "table": {"candles": {"bytes": 65536, "rows": 1024}, "trades": {"bytes": 1048576}}}
    r["adaptive spin-then-park (up to 200 us)"] = {"cpu_pct": 0.8}               # ungrouped idle_cpu
    r["pure spin (never parks)"] = {"group": "idle_cpu", "cpu_pct": 101.0}
    r["incremental"] = {"group": "indicators", "median_us": 1.2}
    r["talib_recompute"] = {"group": "indicators", "median_us": 21.7}
    r["100 markets"] = {"group": "indicators", "updates_per_s": 974000.0}
    r["backtest, ours: the engine"] = {"group": "backtest", "wall_s": 9.1, "units": 1035702, "unit": "trades"}
    r["backtest, peer backtesting.py 0.6.6"] = {"wall_s": 31.0, "units": 176000, "unit": "candles"}
    r["POST /v1/orders round trip (replay exchange)"] = {"group": "orders", "p50_us": 950.0, "p99_us": 1320.0,
                                                         "max_us": 2900.0, "n": 400, "rtt": True}
    r["GET /faults unsigned (HTTP floor, peer)"] = {"p50_us": 570.0, "p99_us": 750.0, "max_us": 1200.0, "n": 400,
                                                    "rtt": True}
    r["trade -> order at the broker, paced 28,800x"] = {"group": "trader", "p50_us": 1600.0, "p99_us": 3900.0,
                                                        "max_us": 9000.0, "n": 440, "trades_per_s": 648.0}
    r["something new"] = {"group": "custom", "widgets": 3}
    return r


def _tables(md: str) -> list[list[str]]:
    """The markdown's tables, each as its lines."""
    out, cur = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def _cells(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_report_has_every_group_table_and_plot(tmp_path):
    results = synthetic()
    path = report.write(results, MACHINE, tmp_path)
    assert path == tmp_path / "report.md"
    md = path.read_text()

    for title in (*(t for g, t in report.GROUPS.items() if g != "other"), "custom"):
        assert f"## {title}" in md, title
    assert "Test CPU @ 2.0GHz" in md and "abc1234" in md and "pyzmq" in md and "27.3.0" in md
    for key, v in results.items():
        name = report.label_of(key, v)
        if report.group_of(key, v) == "wake":
            name = key[:key.rindex(" [")]
        if report.group_of(key, v) == "scale":
            name = f"| {v['markets']:,} |"                       # one row per market count
        if report.group_of(key, v) != "e2e":
            assert name in md, name
    for stage in ("frame -> candle in shm", "candle -> indicator values", "frame -> trader decision"):
        assert f"| {stage} |" in md
    assert "0.61 → 0.74 · CPU 57 % · 2.4 s" in md                  # the load observed during the measurement
    assert "quiet" in md and "CPU hog on one core" in md
    assert "with the monitor off and on" in md                             # the engine with the monitor on and off
    assert "| indicators.30m | 224 KiB | 2.19 MiB | 21.9 MiB | 87.5 MiB |" in md   # shared memory per table

    tables = _tables(md)
    assert len(tables) >= 14
    for t in tables:
        assert len(t) >= 3, t                                     # header, separator, at least one row
        assert re.fullmatch(r"\|( ---:? \|)+", t[1]), t[1]
        assert len({_cells(line) for line in t}) == 1, t          # every row has the header's cell count

    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"wake_cdf.png", "snapshot.png", "e2e_latency_vs_load.png", "e2e_cdf.png", "throughput.png", "scale.png",
            "orders.png", "indicators.png", "backtest.png", "idle_cpu.png"} <= set(images)
    for name in images:
        data = (tmp_path / name).read_bytes()                     # relative to report.md
        assert data.startswith(PNG) and len(data) > 5000, name
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(set(images))


def test_missing_groups_are_left_out(tmp_path):
    md = report.write({"incremental": {"median_us": 1.2}}, {}, tmp_path).read_text()
    assert "## Indicators" in md and "## End-to-end" not in md and "## One-way wake" not in md
    assert not list(tmp_path.glob("*.png"))                       # one bar has no peer to draw against


def test_results_json_thins_samples_and_is_plain():
    r = synthetic()
    big = np.random.default_rng(1).exponential(10.0, 50_000)
    r["ring, adaptive spin-then-park [quiet]"]["samples_us"] = big
    r["odd"] = {"x": np.float64("nan"), "y": np.int64(3), "z": (1.0, np.inf)}
    doc = json.loads(json.dumps(plain(r), allow_nan=False))
    s = doc["ring, adaptive spin-then-park [quiet]"]["samples_us"]
    assert len(s) == 2000   # rounded to 0.01 µs
    assert s[0] == pytest.approx(big.min(), abs=0.005) and s[-1] == pytest.approx(big.max(), abs=0.005)
    assert np.percentile(s, 50) == pytest.approx(np.percentile(big, 50), rel=0.02)
    assert len(doc["e2e 100/s, monitor False"]["stages"]["frame -> candle in shm"]["samples_us"]) == 2000
    assert doc["odd"] == {"x": None, "y": 3, "z": [1.0, None]}


def _run_hook(body) -> None:
    """bench/conftest.py's hook around a test's call, the call being ``body``."""
    from bench import conftest
    gen = conftest.pytest_runtest_call(None)
    next(gen)
    body()
    with pytest.raises(StopIteration):
        gen.send(None)


def test_load_goes_to_the_entries_a_test_touched(monkeypatch):
    from bench import conftest
    results = {"old": {"median_us": 1.0}, "grown": {"group": "scale", "markets": 10}}
    monkeypatch.setattr(conftest, "RESULTS", results)
    monkeypatch.setattr(conftest, "LOADED", {})

    def first():
        results["new"] = {"median_us": 2.0}
        results["grown"]["ingest_trades_per_s"] = 1.0
        t_end = time.perf_counter() + 0.05   # a few ticks of /proc/stat's 10 ms clock, or the busy share is unknown
        while time.perf_counter() < t_end:
            pass
    _run_hook(first)
    assert "load" not in results["old"]
    for k in ("new", "grown"):
        ld = results[k]["load"]
        assert set(ld) == {"load1_before", "load1_after", "cpu_busy_pct", "steal_pct", "test_s"}
        assert ld["test_s"] > 0 and 0 <= ld["cpu_busy_pct"] <= 100 and 0 <= ld["steal_pct"] <= 100
    first_s = results["grown"]["load"]["test_s"]

    _run_hook(lambda: results["grown"].update(shm_bytes=5))     # a second test adds figures to the same entry
    assert results["grown"]["load"]["test_s"] >= first_s        # the loads of both merged
    assert results["new"]["load"]["test_s"] == first_s          # untouched by the second test
