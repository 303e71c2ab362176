"""The crash campaign (:mod:`tests.e2e.crash_campaign`) with a small N (``SMTM_CHAOS_N``, default 8: every kill
window, and every order fault once); ``make chaos`` runs it with N = 100. Zero duplicate orders, zero orders
the ledger does not know, zero unresolved, cash and coins equal to the exchange's accounts."""
from __future__ import annotations

import json
import os

from tests.e2e.crash_campaign import run_campaign


def test_kill_9_at_random_moments_never_duplicates_or_loses_an_order(tmp_path):
    n = int(os.environ.get("SMTM_CHAOS_N", "8"))
    report = run_campaign(tmp_path, n, seed=int(os.environ.get("SMTM_CHAOS_SEED", "9")))
    print(json.dumps(report, indent=2))
    assert report["trials"] == n and report["orders_at_exchange"] > 0
    assert report["duplicates"] == 0
    assert report["unknown_to_ledger"] == 0
    assert report["unresolved"] == 0
    assert report["fill_mismatches"] == 0
    assert report["balance_mismatches"] == 0, report["balance_detail"]
    assert report["reconcile_problems"] == []
