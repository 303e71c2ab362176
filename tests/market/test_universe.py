"""The symbol manager's domain: the safety filter on the recorded market/all response, and top-N
hysteresis."""

from procs.market.tape import load_market_all
from procs.market.universe import SymbolManager, TopN, safety_flags
from shm.symbols import CAUTION, WARNING
from tests.helpers import ROOT


def test_safety_filter_excludes_exactly_the_flagged_krw_markets():
    doc = load_market_all(ROOT / "data" / "upbit")
    flags = safety_flags(doc)
    krw = [m for m in doc if m["market"].startswith("KRW-")]
    assert len(flags) == len(krw) == 155
    for m in krw:
        ev = m["market_event"]
        flagged = ev["warning"] or any(ev["caution"].values())
        assert (flags[m["market"]] != 0) == flagged, m["market"]
        assert bool(flags[m["market"]] & WARNING) == ev["warning"]
        assert bool(flags[m["market"]] & CAUTION) == any(ev["caution"].values())
    assert "KRW-ETC" in flags and flags["KRW-ETC"] & CAUTION  # TRADING_VOLUME_SOARING in the recording
    assert not any(c.startswith(("BTC-", "USDT-")) for c in flags)


def test_topn_hysteresis_does_not_flap():
    top = TopN(2, min_stable_s=100)
    assert top.update(["A", "B", "C"], 0) == ["A", "B"]          # start-up: the top 2 at once
    # C and B swap around the cut every 30 s: nothing changes while neither is stable
    for t, ranked in ((30, ["A", "C", "B"]), (60, ["A", "B", "C"]), (90, ["A", "C", "B"]), (120, ["A", "B", "C"])):
        assert top.update(ranked, t) == ["A", "B"], t
    # C stays inside for 100 s: B leaves after 100 s outside, C joins once there is room
    for t in (150, 200, 249):
        assert top.update(["A", "C", "B"], t) == ["A", "B"]
    assert top.update(["A", "C", "B"], 250) == ["A", "C"]     # both stable for 100 s: B out, C in
    assert top.update(["D", "A", "C"], 252) == ["A", "C"]     # D must prove itself too


def test_the_first_ranking_waits_for_every_candidate():
    """At start-up the top N is taken at once: from a complete ranking, not from the first two markets
    that happened to trade (the universe would shrink to them and grow back)."""
    from procs.market.types import Ticker
    from procs.runtime.config import SymbolsConfig

    class Table:
        n_rows = 32
        written = None

        def write(self, rows):
            self.written = rows
    market_all = [{"market": m, "market_event": {"warning": False, "caution": {}}} for m in ("KRW-A", "KRW-B", "KRW-C")]
    traded = {"KRW-A": 3e9, "KRW-B": 2e9}
    now = [1_000_000]

    def tickers(codes):
        return [Ticker(c, 1.0, traded[c], 1.0, now[0], "ACTIVE") for c in codes if c in traded]
    table = Table()
    mgr = SymbolManager(SymbolsConfig(top_n=2, rank_interval_s=600.0), ("KRW-A", "KRW-B", "KRW-C"), table,
                        market_all=lambda: market_all, tickers=tickers)
    assert not mgr.step() and table.written is None        # KRW-C has not traded yet
    traded["KRW-C"] = 5e9
    now[0] += 1_000
    assert mgr.step()
    assert [r[0] for r in table.written if r[1]] == ["KRW-C", "KRW-A"]


def test_a_held_market_stays_subscribed_after_it_leaves_the_top_n():
    """A market the trader still holds keeps IN_UNIVERSE (ingest keeps its trades coming, so the exit can
    fill) without TRADABLE, and is dropped once the trader no longer holds it."""
    from procs.market.types import Ticker
    from procs.runtime.config import SymbolsConfig
    from shm.symbols import IN_UNIVERSE, TRADABLE

    class Table:
        n_rows = 32
        written = None

        def write(self, rows):
            self.written = rows
    markets = ("KRW-A", "KRW-B", "KRW-C")
    market_all = [{"market": m, "market_event": {"warning": False, "caution": {}}} for m in markets]
    traded = {"KRW-A": 3e9, "KRW-B": 2e9, "KRW-C": 1e9}
    now = [1_000_000]
    held: set[str] = set()

    def tickers(codes):
        return [Ticker(c, 1.0, traded[c], 1.0, now[0], "ACTIVE") for c in codes]
    table = Table()
    mgr = SymbolManager(SymbolsConfig(top_n=1, rank_interval_s=600.0, min_stable_s=0.0), markets, table,
                        market_all=lambda: market_all, tickers=tickers, held=lambda: set(held))
    assert mgr.step()
    flags = {r[0]: r[1] for r in table.written}
    assert flags["KRW-A"] == IN_UNIVERSE | TRADABLE and flags["KRW-B"] == 0
    held.add("KRW-A")
    traded["KRW-B"] = 9e9
    now[0] += 700_000
    assert mgr.step()
    flags = {r[0]: r[1] for r in table.written}
    assert flags["KRW-B"] == IN_UNIVERSE | TRADABLE and flags["KRW-A"] == IN_UNIVERSE   # held: subscribed only
    held.clear()                                     # the trader sold it
    now[0] += 1_000
    assert mgr.step()                                # rewritten at once, not at the next ranking
    assert {r[0]: r[1] for r in table.written}["KRW-A"] == 0
