"""A backtest: the trader's own engine (:class:`~procs.trading.engine.Engine`: strategy, risk checks, order
state machine, ledger) with the paper broker and its fill model, fed in one process — no supervisord, no
shared memory — with the trade tape the replay exchange serves (:mod:`procs.market.tape`), as fast as the
engine goes.

What the engine is fed, and in which order (the order the trader sees them in):

* every trade of the tape, all markets merged in time order (ties: market order), as
  :meth:`~procs.trading.engine.Engine.on_trade`;
* a market's signal-timeframe candle closes when the first trade of a later candle of that market arrives:
  right after that trade, :meth:`~procs.trading.engine.Engine.on_candle_close` with the candle's close and
  the indicators of it and of the candle before (:class:`~procs.market.indicators.IndicatorSet`, the
  indicator process's code and parameters); a candle interval without trades has no candle, as ingest
  builds them;
* the tradable top N (:class:`~procs.market.universe.TopN`): the markets without a WARNING / CAUTION flag,
  ranked by traded value over the trailing 24 h of market time, every ``symbols.rank_interval_s`` of market
  time, with ``symbols.min_stable_s`` — the symbol manager's rule, on the tape's trades.

The ledger (``ledger.sqlite``) and the equity curve go to the backtest's own directory; a running instance's
ledger and shared memory are never touched. Market time drives everything (the ledger's wall-clock columns
get market time too), so two runs of the same backtest write the same ledger.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shm.tables import INDICATOR_DTYPE
from shm.trading import ARMED, DISARMED

from ..market.indicators import IndicatorSet
from ..market.tape import ReplayTape, load_market_all, parse_utc
from ..market.universe import TopN, safety_flags
from ..runtime.config import IndicatorConfig, SymbolsConfig, TraderConfig, tf_seconds
from ..trading.broker import PaperBroker
from ..trading.engine import Engine, Refused
from ..trading.fills import FillModel
from ..trading.ledger import Ledger

COLUMNS = INDICATOR_DTYPE.names[1:]


@dataclass(frozen=True)
class BacktestSpec:
    """What to run: ``markets`` over candles starting in ``[start_s, end_s)`` (Unix s UTC; None = all the
    data), ``data_dir`` (a directory with ``minute30/*.csv.gz``, Upbit's minute-candle rows), the signal
    ``timeframe`` (a multiple of the data's 30 minutes), ``trades_per_candle`` (the tape's synthesis)."""
    markets: tuple[str, ...]
    data_dir: Path
    start_s: int | None = None
    end_s: int | None = None
    timeframe: str = "30m"
    trades_per_candle: int = 6
    #: ARM the engine again at each new KST day after a risk limit disarmed it (an operator's ARM); without it
    #: the engine stays DISARMED after a trip, as the trader does until someone ARMs it
    rearm: bool = False
    #: where parsed candles are kept between runs (:func:`~procs.market.tape.load_source_candles`); None: parse
    cache_dir: Path | None = None


#: the columns of a closed position a backtest reports (``trades.csv``)
TRADE_COLUMNS = ("id", "market", "entry_tag", "exit_reason", "opened_ms", "closed_ms", "bought_qty", "buy_krw",
                 "sell_krw", "fees", "realized")


@dataclass
class BacktestResult:
    """What a run produced, read from its ledger once at the end: where the ledger is, the equity curve sampled
    at every signal-timeframe boundary (``equity`` rows: market time s, equity KRW, cash KRW, invested KRW), the
    closed positions (dicts of :data:`TRADE_COLUMNS`), every fill ``(market, side, t_ms, price)``, the risk trips
    and mode changes ``(market ms, action, detail)``, the fees paid, the source candles (the benchmark and the
    report's chart) and how long it took."""
    out_dir: Path
    ledger_path: Path
    equity: np.ndarray
    ticks: int                  #: trades of the tape fed to the engine
    wall_s: float
    starting_cash: float
    fee_rate: float
    fees: float
    closed: list[dict] = field(default_factory=list, repr=False)
    fills: list[tuple] = field(default_factory=list, repr=False)
    events: list[tuple] = field(default_factory=list, repr=False)
    candles: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


EQUITY_DTYPE = np.dtype([("t", "<i8"), ("equity", "<f8"), ("cash", "<f8"), ("invested", "<f8")])


class _Universe:
    """The symbol manager's ranking on the tape: traded value over the trailing 24 h of market time per market,
    every ``rank_interval_s`` of market time, :class:`TopN` with its minimum stable time; the first ranking
    waits until every market has traded or one rank interval has passed (the symbol manager's rule). Markets
    with a WARNING / CAUTION flag are never ranked. The ranking times and values depend on the tape only, so
    they are computed up front (prefix sums, one ``searchsorted`` per market)."""

    def __init__(self, tape: ReplayTape, rows: dict[str, np.ndarray], cfg: SymbolsConfig, flags: dict[str, int]):
        """``rows``: each market's trade indices in the tape, in time order."""
        self.top = TopN(cfg.top_n, cfg.min_stable_s)
        tr = tape.trades
        all_ts = np.ascontiguousarray(tr["ts"])
        self.names = [m for m in tape.markets if not flags.get(m, 0)]
        firsts = [int(all_ts[rows[m][0]]) if len(rows[m]) else None for m in self.names]
        known = [f for f in firsts if f is not None]
        interval = int(cfg.rank_interval_s * 1000)
        first = min(max(known) if len(known) == len(firsts) and known else 2**62,
                    (min(known) if known else 0) + interval)
        # the first trade at or after each due time: from each trade, the trade one interval later (at once),
        # then followed from the first ranking
        after = np.searchsorted(all_ts, all_ts + max(interval, 1)).tolist()
        picked, i, n_ts = [], int(np.searchsorted(all_ts, first)), len(all_ts)
        while i < n_ts:
            picked.append(i)
            i = after[i]
        times = all_ts[picked].astype(np.int64)
        self.times = times
        self.value = np.zeros((len(times), len(self.names)))
        self.traded = np.zeros((len(times), len(self.names)), bool)
        for j, m in enumerate(self.names):
            mine = tr[rows[m]]
            ts = np.ascontiguousarray(mine["ts"])
            cum = np.r_[0.0, np.cumsum(mine["price"] * mine["volume"])]
            hi = np.searchsorted(ts, self.times, side="right")
            lo = np.searchsorted(ts, self.times - 86_400_000, side="right")
            self.value[:, j] = cum[hi] - cum[lo]
            self.traded[:, j] = hi > 0
        # the rankings whose top N (as a set) is the one before: when the members are that top N, TopN would
        # change nothing, so those rankings are skipped (most of them)
        k_n = len(self.names)
        intop = np.zeros((len(times), k_n), bool)
        if len(times) and k_n:
            masked = np.where(self.traded, self.value, -np.inf)
            order = np.argsort(-masked, axis=1, kind="stable")[:, :cfg.top_n]    # ties: market order, as sorted()
            intop[np.arange(len(times))[:, None], order] = True
            intop &= self.traded
        self.intop = intop
        self.same = np.r_[False, (intop[1:] == intop[:-1]).all(axis=1)] if len(times) else np.zeros(0, bool)
        self.members: set[str] = set()
        self.steady = False
        self.k = 0

    def rank(self, t_ms: int) -> set[str]:
        """The tradable set at the next ranking (due at trade time ``t_ms``, that trade included)."""
        k = self.k
        self.k += 1
        if self.steady and self.same[k]:
            return self.members
        row, ok = self.value[k], self.traded[k]
        ranked = [self.names[j] for j in sorted(np.flatnonzero(ok).tolist(), key=lambda j: -row[j])]
        self.members = set(self.top.update(ranked, t_ms / 1000))
        self.steady = self.members == {self.names[j] for j in np.flatnonzero(self.intop[k]).tolist()}
        return self.members


def run_backtest(spec: BacktestSpec, trader: TraderConfig, out_dir: Path, *, indicators: IndicatorConfig | None = None,
                 symbols: SymbolsConfig | None = None, progress=None, tape: ReplayTape | None = None
                 ) -> BacktestResult:
    """Run one backtest into ``out_dir`` (created; a ledger already there is an error: a backtest never
    continues another). ``progress(done, total)`` is called now and then; ``tape``: the spec's tape, already
    built (a sweep builds it once for all its runs). Raises FileNotFoundError for data that is not there,
    ValueError for a timeframe the data cannot make."""
    t0 = time.perf_counter()
    tf_s = tf_seconds(spec.timeframe)
    if tf_s % 1800:
        raise ValueError(f"timeframe {spec.timeframe}: the data is 30-minute candles; use 30m, 1h, 4h or 1d")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "ledger.sqlite"
    if path.exists():
        raise FileExistsError(f"{path} exists: a backtest writes a new directory")
    if tape is None:
        tape = ReplayTape.build(spec.data_dir, list(spec.markets), spec.trades_per_candle, spec.start_s, spec.end_s,
                                spec.cache_dir)
    tr = tape.trades
    by_market = np.argsort(tr["market"], kind="stable")      # each market's trades, in time order
    cuts = np.searchsorted(tr["market"][by_market], np.arange(len(tape.markets) + 1))
    rows = {m: by_market[cuts[j]:cuts[j + 1]] for j, m in enumerate(tape.markets)}
    ind_cfg = indicators or IndicatorConfig()
    try:
        flags = safety_flags(load_market_all(spec.data_dir))
    except FileNotFoundError:
        flags = {}
    universe = _Universe(tape, rows, symbols or SymbolsConfig(top_n=len(spec.markets)), flags)
    clock = [0]     # market ms of a ranking being applied (before its trade reaches the engine)
    ledger = Ledger(path, durable=False)    # a result, not an account: one transaction, no fsync
    engine: Engine | None = None

    def wall_ns() -> int:     # market time is the backtest's clock
        return max(clock[0], engine.market_ms if engine is not None else 0) * 1_000_000
    engine = Engine(trader, ledger, PaperBroker(FillModel(trader.fee_rate, trader.slippage_pct)), wall_ns=wall_ns,
                    run_id="backtest")
    if engine.mode != ARMED:   # a backtest trades (a new ledger starts DISARMED without arm_on_start)
        engine.arm("backtest", "backtest")
    sets = {m: IndicatorSet(**ind_cfg.periods()) for m in spec.markets}
    # a market's indicators are computed when the engine acts on its close (Engine.acts_on_close): until then
    # its closes wait here and are folded in order when it does — the same values, for the markets that matter
    pending: dict[str, list[float]] = {m: [] for m in spec.markets}
    last: dict[str, tuple | None] = dict.fromkeys(spec.markets)     # values at the newest folded close
    tf_ms = tf_s * 1000
    n = len(tr)
    ts_np = tr["ts"].astype(np.int64)
    bucket = ts_np - ts_np % tf_ms
    # what happens at each trade, worked out from the tape at once (it depends on the tape only): before
    # trade i, an equity sample when its bucket is past the previous trade's (any market) ...
    mark = np.zeros(n, bool)
    mark[1:] = bucket[1:] != bucket[:-1]
    # ... and a ranking when one is due; after it, the close of its market's previous candle when i is the
    # first trade of a new one
    rank_at = np.zeros(n, bool)
    rank_at[np.searchsorted(ts_np, universe.times)] = True
    firsts, befores = [], []
    for idx in rows.values():
        new = np.flatnonzero(bucket[idx[1:]] != bucket[idx[:-1]]) + 1
        firsts.append(idx[new])
        befores.append(idx[new - 1])
    first, before = (np.concatenate(firsts), np.concatenate(befores)) if firsts else (np.zeros(0, int),) * 2
    close_at: dict[int, tuple[int, float]] = dict(zip(first.tolist(), zip(
        bucket[before].tolist(), tr["price"][before].tolist(), strict=True), strict=True))
    event = mark | rank_at
    event[first] = True
    event[::50_000] = True                    # progress
    if spec.rearm:
        event[:] = True
    equity: list[tuple] = []
    day = engine.day
    on_trade, on_close, rearm = engine.on_trade, engine.on_candle_close, spec.rearm
    b_all, mark_all, rank_all = bucket.tolist(), mark.tolist(), rank_at.tolist()
    for i, m, ts, price, vol, sid, ev in zip(range(n), [tape.markets[j] for j in tr["market"].tolist()],
                                             ts_np.tolist(), tr["price"].tolist(), tr["volume"].tolist(),
                                             tr["seq_id"].tolist(), event.tolist()):
        if not ev:                # most trades: nothing but the trade
            on_trade(m, ts, price, vol, sid)
            continue
        if mark_all[i]:           # an equity sample at the timeframe boundary just passed
            eq = engine.equity
            equity.append(((b_all[i - 1] + tf_ms) // 1000, eq, engine.cash, eq - engine.cash))
        if rank_all[i]:
            clock[0] = ts
            ranked = universe.rank(ts)
            if ranked != engine.tradable:
                engine.on_universe(ranked)
        if progress is not None and not i % 50_000:
            progress(i, n)
        on_trade(m, ts, price, vol, sid)
        if rearm:
            if engine.mode == DISARMED and engine.day != day:
                with contextlib.suppress(Refused):
                    engine.arm("backtest", f"--rearm: a new KST day ({engine.day})")
            day = engine.day
        c = close_at.get(i)
        if c is not None:         # this trade closed its market's candle before it
            if not engine.acts_on_close(m):
                if last[m] is not None or pending[m]:   # not the market's first candle:
                    engine.decisions += 1               # all on_candle_close would have done
                pending[m].append(c[1])
                continue
            ind, before = sets[m], last[m]
            for x in pending[m]:
                before = ind.update(x)
            pending[m].clear()
            now = last[m] = ind.update(c[1])
            if before is not None:    # a market's first candle has none before it: not evaluated
                on_close(m, c[0] // 1000, c[1], dict(zip(COLUMNS, before, strict=True)),
                         dict(zip(COLUMNS, now, strict=True)))
    if progress is not None:
        progress(n, n)
    if n:
        eq = engine.equity
        equity.append(((b_all[-1] + tf_ms) // 1000, eq, engine.cash, eq - engine.cash))
    engine.flush()
    closed = [{c: r[c] for c in TRADE_COLUMNS} for r in ledger.query(
        f"SELECT {', '.join(TRADE_COLUMNS)} FROM positions WHERE state = 'closed' ORDER BY closed_ms, id")]
    fills = [tuple(r) for r in ledger.query("SELECT market, side, t_ms, price FROM fills ORDER BY id")]
    events = [tuple(r) for r in ledger.query(
        "SELECT market_ms, action, CASE WHEN detail = '' THEN why ELSE detail END FROM trade_audit"
        " WHERE action LIKE 'trip %' OR action LIKE 'mode %' ORDER BY id")]
    ledger.close()
    return BacktestResult(out_dir, path, np.array(equity, dtype=EQUITY_DTYPE), n, time.perf_counter() - t0,
                          engine.starting_cash, trader.fee_rate, engine.fees, closed, fills, events, tape.candles)


def day_s(s: str) -> int | None:
    """``YYYY-MM-DD`` (UTC) → Unix s; "" → None. Raises ValueError naming the value."""
    if not s:
        return None
    try:
        return parse_utc(s)
    except ValueError:
        raise ValueError(f"{s!r} is not a day (YYYY-MM-DD)") from None
