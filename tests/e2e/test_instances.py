"""Instances side by side (the seeds' per-user engines): two complete systems from one checkout, each
with its own supervisord socket, pid file and logs under run/<instance>/, its own replay-exchange
port and its own shared memory; `smtm down` of one leaves the other untouched."""
import os
import subprocess
import sys
import uuid

from procs.runtime.roster import STATUS_ROWS
from shm.segment import list_instance_objects, unlink_instance
from shm.tables import CANDLES
from tests.helpers import ROOT, Env, attach, published, start_supervisord, stop_supervisord, wait_for


def test_two_instances_run_side_by_side_and_stop_alone(env, tmp_path):
    alice = env
    bob = Env(f"t{uuid.uuid4().hex[:10]}", tmp_path / "bob", run_base=alice.run_base)
    (tmp_path / "bob").mkdir()
    sups = []
    try:
        for e in (alice, bob):
            e.write_overlay(markets=["KRW-BTC", "KRW-ETH"], speed=3600.0)
            sups.append(start_supervisord(e, conf_dir=e.tmp / "sv")[0])
        for sup in sups:
            wait_for(lambda s=sup: s.running() and len(s.processes()) == len(STATUS_ROWS)
                     and all(p["statename"] == "RUNNING" for p in s.processes()), 90, f"{sup.instance} RUNNING")
        sa, sb = sups
        assert sa.socket != sb.socket and os.path.exists(sa.socket) and os.path.exists(sb.socket)
        for e in (alice, bob):
            assert (e.run_dir / "supervisord.pid").exists() and (e.run_dir / "logs" / "ingest.log").exists()
        pa, pb = (wait_for(lambda e=e: published(e.run_dir), 30, "the exchange's port").port for e in (alice, bob))
        assert pa != pb
        rings = [wait_for(lambda e=e: attach(CANDLES.open, e.instance, "30m", 32, 2048), 30, "candles")
                 for e in (alice, bob)]
        for r in rings:
            wait_for(lambda r=r: r.counts().sum() > 2, 60, "candles in both instances")
        assert list_instance_objects(alice.instance) and list_instance_objects(bob.instance)

        out = subprocess.run([sys.executable, "-m", "procs.cli", "--conf", str(alice.tmp / "sv" / "supervisord.conf"),
                              "down"], cwd=ROOT, env=alice.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"instance {alice.instance!r} stopped" in out.stdout
        assert not sa.running() and list_instance_objects(alice.instance) == []
        assert sb.running() and all(p["statename"] == "RUNNING" for p in sb.processes())
        n = int(rings[1].counts().sum())
        wait_for(lambda: int(rings[1].counts().sum()) > n, 30, "bob's candles to keep coming")
        status = subprocess.run([sys.executable, "-m", "procs.cli", "--conf", str(bob.tmp / "sv" / "supervisord.conf"),
                                 "ctl", "status"], cwd=ROOT, env=bob.env, capture_output=True, text=True, timeout=60)
        assert status.stdout.count("RUNNING") == len(STATUS_ROWS), status.stdout
    finally:
        for sup in sups:
            stop_supervisord(sup)
        bob.stop_all()
        unlink_instance(bob.instance)
