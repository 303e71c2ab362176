"""Configuration: TOML in ``conf/``, each key declared once — with its type, default and limits —
in the frozen pydantic models below, and validated at start (loaded by :mod:`.loader`).

A bad value raises :class:`ConfigError` naming the key path, the value and what is allowed
(``shm.timeframes[1] = '7m': allowed values are '1m', ...``), and the process stops before it
touches shared memory. Unknown keys are errors too (a typo must not silently fall back to a
default). Checks that span sections (a timeframe that must be one of the candle tables, the
replay exchange's data directory, the tables fitting in ``/dev/shm``) run in :class:`Config`.

Each process receives only the sections it needs (:attr:`Config.base` — instance, run
directory, markets, tables — plus its own section and, for the network clients, ``[upbit]``),
never the whole configuration. API keys never come from here (DESIGN §6): only from the
environment.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from shm.tables import table_sizes

from .presets import PresetName, StrategyParams, resolve
from .roster import STATUS_ROWS

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
PROFILES = ("replay", "live")

#: Supported timeframes → seconds. Candle starts are multiples of this in UTC
#: (Upbit aligns 4 h candles to 00/04/08/.. UTC = 01/05/09.. KST, days to 00:00 UTC).
TIMEFRAMES = {"1m": 60, "3m": 180, "5m": 300, "10m": 600, "15m": 900, "30m": 1800,
              "1h": 3600, "4h": 14400, "1d": 86400}
Timeframe = Literal["1m", "3m", "5m", "10m", "15m", "30m", "1h", "4h", "1d"]
assert get_args(Timeframe) == tuple(TIMEFRAMES)

#: Buy rules of ``procs.market.signals`` (its ``RULES`` must have exactly these names).
SignalRule = Literal["macd_cross", "macd_cross_rsi_bb", "macd_above"]

MarketCode = Annotated[str, StringConstraints(pattern=r"^KRW-[A-Z0-9]{1,12}$")]
Day = Annotated[str, StringConstraints(pattern=r"^(\d{4}-\d{2}-\d{2})?$")]
Seconds = Annotated[float, Field(ge=0.0, le=1e7)]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def tf_seconds(tf: str) -> int:
    """Seconds of a timeframe name such as ``"30m"``; raises ConfigError for others."""
    try:
        return TIMEFRAMES[tf]
    except KeyError:
        raise ConfigError(f"unknown timeframe {tf!r}: allowed values are {', '.join(TIMEFRAMES)}") from None


class Section(BaseModel):
    """Every section: frozen, unknown keys refused, no type coercion (``'8'`` is not 8), finite floats."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _unique(values: tuple, what: str) -> tuple:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{v!r} appears twice in {what}")
        seen.add(v)
    return values


class MarketsConfig(Section):
    """The markets this instance knows: ingest's universe until the symbols table exists, the
    symbol manager's candidates (``symbols.candidates = "config"``), what the replay serves."""
    codes: Annotated[tuple[MarketCode, ...], Field(min_length=1)]

    @field_validator("codes")
    @classmethod
    def _no_repeats(cls, v):
        return _unique(v, "markets.codes")


class ShmConfig(Section):
    """The data plane's tables (their sizes are part of each segment's layout)."""
    rows: Annotated[int, Field(ge=1, le=4096)] = 32           #: market rows per table
    capacity: Annotated[int, Field(ge=16, le=1 << 20)] = 2048  #: records per ring (each timeframe)
    #: one ``candles.<tf>`` / ``indicators.<tf>`` pair per timeframe; the finest is built from trades
    timeframes: Annotated[tuple[Timeframe, ...], Field(min_length=1)] = ("30m", "4h", "1d")
    trades_capacity: Annotated[int, Field(ge=16, le=1 << 20)] = 4096   #: trades kept per market (``trades``)
    orders_rows: Annotated[int, Field(ge=8, le=4096)] = 64             #: open + recent orders shown (``orders``)
    timeline_capacity: Annotated[int, Field(ge=16, le=1 << 20)] = 1024  #: entries of ``timeline.trader``

    @field_validator("timeframes")
    @classmethod
    def _no_repeats(cls, v):
        return _unique(v, "shm.timeframes")


def _url(pattern: str, expected: str):
    """A field validator: ``"auto"`` or a URL matching ``pattern``."""
    def check(cls, v: str) -> str:
        if v != "auto" and not re.match(pattern, v):
            raise ValueError(f"expected 'auto' or {expected}")
        return v
    return classmethod(check)


class UpbitConfig(Section):
    """Where the Upbit API is. ``"auto"``: the replay exchange of this instance, whose address it
    publishes in ``run/<instance>/exchange.json`` when it listens (read again at each connect)."""
    ws_url: str = "auto"
    rest_url: str = "auto"

    _ws = field_validator("ws_url")(_url(r"^wss?://[^/\s]+(/\S*)?$",
                                         "a ws:// or wss:// URL such as 'wss://api.upbit.com/websocket/v1'"))
    _rest = field_validator("rest_url")(_url(r"^https?://[^/\s]+/?$",
                                             "an http:// or https:// base URL such as 'https://api.upbit.com'"))


class ExchangeConfig(Section):
    """The replay exchange (an Upbit-compatible server on loopback)."""
    enabled: bool = True
    host: Literal["127.0.0.1", "localhost", "::1"] = "127.0.0.1"   #: loopback only
    port: Annotated[int, Field(ge=0, le=65535)] = 0   #: 0 = a free port, published in the run directory
    data_dir: Annotated[str, Field(min_length=1)] = "data/upbit"   #: relative to the repository root unless absolute
    speed: Annotated[float, Field(ge=0.0, le=1e9)] = 1800.0  #: replay s per wall s; 0 = as fast as consumers keep up
    #: a load generator: trades per wall second, sent evenly and re-stamped so that market time runs at wall
    #: time (the tape's prices at a chosen rate); 0 = paced by ``speed``
    rate: Annotated[float, Field(ge=0.0, le=1e7)] = 0.0
    trades_per_candle: Annotated[int, Field(ge=4, le=64)] = 6      #: synthesized trades per source candle
    rest_per_second: Annotated[int, Field(ge=1, le=1000)] = 10     #: REST requests per s and group before 429
    recording: str = ""     #: replay this recording (path or glob) instead of the bundled candles
    start: Day = ""         #: replay only candles from this UTC day (YYYY-MM-DD) ...
    end: Day = ""           #: ... up to (not including) this one
    #: the replay account (the exchange API): its KRW at start, and its API keys, which exist only for the replay
    account_krw: Annotated[float, Field(ge=0.0, le=1e13)] = 10_000_000.0
    access_key: Annotated[str, Field(min_length=8, max_length=64)] = "replay-access-key-0123456789abcdefghijk"
    secret_key: Annotated[str, Field(min_length=8, max_length=128)] = "replay-secret-key-0123456789abcdefghijk"


class IngestConfig(Section):
    #: WebSocket format requested; the _LIST formats let the server put several messages in one frame
    format: Literal["DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST"] = "SIMPLE"
    ping_interval_s: Annotated[float, Field(ge=1.0, le=110.0)] = 30.0  #: ping frames (Upbit closes after 120 s idle)
    ping_timeout_s: Annotated[float, Field(ge=0.5, le=60.0)] = 10.0
    keepalive_s: Annotated[float, Field(ge=0.5, le=110.0)] = 10.0   #: the text ``PING`` this often
    stall_timeout_s: Annotated[float, Field(ge=0.5, le=600.0)] = 15.0  #: no frame for this long = stalled
    backoff_base_s: Annotated[float, Field(ge=0.01, le=60.0)] = 0.5   #: first reconnect delay, doubling ...
    backoff_cap_s: Annotated[float, Field(ge=0.01, le=600.0)] = 30.0  #: ... up to this, +-50 % jitter
    max_connects_per_s: Annotated[float, Field(ge=0.1, le=5.0)] = 5.0  #: Upbit: 5 connection attempts per s
    dedupe_window: Annotated[int, Field(ge=16, le=1_000_000)] = 8192  #: sequential_ids remembered per market
    max_future_s: Annotated[float, Field(ge=0.0, le=86_400.0)] = 60.0  #: trade time at most this ahead of our clock
    price_band: Annotated[float, Field(ge=1.01, le=1e6)] = 5.0   #: a trade priced over x this (or under /this) ...
    #: ... the market's last price is held: not applied, counted, its candle re-read from REST
    repair_hold_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 10.0  #: longest hold of a market's trades ...
    #: ... while its gap repair's REST keeps failing (then they are applied and the repair goes on)
    reclaim_after_s: Annotated[float, Field(ge=0.0, le=1e7)] = 3600.0  #: a row gone this long may be reused
    subscribe_ticker: bool = False  #: also subscribe to ``ticker`` (live profile)
    record: bool = False            #: record every received frame
    record_dir: str = ""            #: where; "" = <run dir>/recordings
    record_rotate_s: Annotated[float, Field(ge=1.0, le=86400.0)] = 600.0
    record_rotate_mb: Annotated[float, Field(ge=0.01, le=10_000.0)] = 64.0
    heartbeat_s: Annotated[float, Field(ge=0.01, le=1.0)] = 0.25

    @model_validator(mode="after")
    def _backoff(self):
        if self.ping_interval_s <= self.ping_timeout_s:
            raise ValueError(f"ingest.ping_interval_s = {self.ping_interval_s} must be more than ingest.ping_timeout_s "
                             f"= {self.ping_timeout_s} (a ping is answered before the next one goes out)")
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError(f"ingest.backoff_cap_s = {self.backoff_cap_s} must be >= ingest.backoff_base_s = "
                             f"{self.backoff_base_s}")
        return self


Period = Annotated[int, Field(ge=2, le=1000)]


class IndicatorConfig(Section):
    ema_fast: Period = 12
    ema_slow: Period = 26
    rsi_period: Period = 14                                       #: Wilder
    macd_fast: Period = 12
    macd_slow: Period = 26
    macd_signal: Annotated[int, Field(ge=1, le=1000)] = 9
    bb_period: Period = 20
    bb_k: Annotated[float, Field(ge=0.1, le=10.0)] = 2.0          #: band width in population std devs
    spin_us: Annotated[float, Field(ge=0.0, le=100_000.0)] = 200.0  #: longest spin before parking (adaptive)
    park_timeout_s: Annotated[float, Field(ge=0.001, le=1.0)] = 0.25  #: longest park (heartbeat period)

    @model_validator(mode="after")
    def _orders(self):
        for fast, slow in (("ema_fast", "ema_slow"), ("macd_fast", "macd_slow")):
            if getattr(self, fast) >= getattr(self, slow):
                raise ValueError(f"indicator.{fast} = {getattr(self, fast)} must be < indicator.{slow} = "
                                 f"{getattr(self, slow)}")
        return self

    def periods(self) -> dict:
        """``IndicatorSet`` keyword arguments."""
        return self.model_dump(exclude={"spin_us", "park_timeout_s"})


class SignalsConfig(Section):
    """Buy signals (``procs.market.signals``), evaluated on candle close of ``timeframe``."""
    timeframe: Literal[("", *TIMEFRAMES)] = ""  # type: ignore[valid-type]  #: "" = the finest of shm.timeframes
    rules: Annotated[tuple[SignalRule, ...], Field(min_length=1)] = ("macd_cross_rsi_bb",)
    rsi_max: Annotated[float, Field(ge=0.0, le=100.0)] = 70.0      #: RSI bound of macd_cross_rsi_bb

    def on(self, base: BaseConfig) -> str:
        """The timeframe buy signals are evaluated on: ``timeframe``, or the finest of the tables."""
        return self.timeframe or base.finest_timeframe


class SymbolsConfig(Section):
    """The symbol manager; intervals in market time."""
    top_n: Annotated[int, Field(ge=1, le=4096)] = 8
    min_stable_s: Seconds = 1800.0
    rank_interval_s: Seconds = 600.0
    safety_interval_s: Seconds = 3600.0
    poll_s: Annotated[float, Field(ge=0.05, le=600.0)] = 1.0
    candidates: Literal["config", "all"] = "config"   #: "config" = markets.codes; "all" = every KRW market


class StrategyOverrides(Section):
    """``[trader.strategy]``: keys of :class:`~procs.runtime.presets.StrategyParams` that replace the
    preset's (all optional; the merged set is validated as a whole)."""
    order_share: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_positions: Annotated[int, Field(ge=1, le=64)] | None = None
    take_profit_pct: Annotated[float, Field(ge=0.2, le=100.0)] | None = None
    stop_loss_pct: Annotated[float, Field(ge=0.1, lt=100.0)] | None = None
    rule: SignalRule | None = None
    rsi_max: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    daily_loss_pct: Annotated[float, Field(gt=0.0, le=100.0)] | None = None
    exit_on_dead_cross: bool | None = None

    def overrides(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class UpbitBrokerConfig(Section):
    """The Upbit broker (``trader.broker = "upbit"``): timeouts and how unknown orders are resolved."""
    connect_timeout_s: Annotated[float, Field(gt=0.0, le=30.0)] = 2.0
    #: an order request with no answer after this is ``unknown`` (never re-sent: looked up by identifier)
    order_timeout_s: Annotated[float, Field(gt=0.0, le=60.0)] = 3.0
    #: an identifier the exchange does not know is "never placed" only once this long has passed since it was sent
    unknown_grace_s: Annotated[float, Field(ge=0.0, le=600.0)] = 10.0
    #: open orders are polled on each trade of their market, at most this often (0: on every trade) ...
    poll_s: Annotated[float, Field(ge=0.0, le=60.0)] = 0.2
    #: ... and all of them at least this often, trades or not (unknown orders with backoff from 0.5 s)
    refresh_s: Annotated[float, Field(gt=0.0, le=600.0)] = 2.0
    #: cash or a coin balance that differs from the ledger by more than this keeps the trader DISARMED
    balance_tolerance_krw: Annotated[float, Field(ge=0.0, le=1e6)] = 1.0


class TraderConfig(Section):
    """The engine (``procs.trading``): broker, preset, the account's risk limits, the command socket.
    Money in KRW, shares as fractions, limits as percent."""
    #: "paper" simulates fills on the trade stream; "upbit" sends signed orders to the exchange API (the replay
    #: exchange in the replay profile, api.upbit.com in live), keys from UPBIT_ACCESS_KEY / UPBIT_SECRET_KEY
    broker: Literal["paper", "upbit"] = "paper"
    preset: PresetName = "BALANCED"
    strategy: StrategyOverrides = StrategyOverrides()
    arm_on_start: bool = False        #: come back ARMED after a restart that found it ARMED (paper broker only)
    starting_cash: Annotated[float, Field(ge=5000.0, le=1e13)] = 10_000_000.0   #: a new ledger's KRW
    fee_rate: Annotated[float, Field(ge=0.0, le=0.01)] = 0.0005    #: per side (Upbit KRW: 0.05 %)
    slippage_pct: Annotated[float, Field(ge=0.0, le=5.0)] = 0.05   #: paper market orders fill this much worse
    min_order_krw: Annotated[float, Field(ge=5000.0, le=1e9)] = 5000.0     #: Upbit's KRW minimum (raise only)
    max_order_krw: Annotated[float, Field(ge=5000.0, le=1e12)] = 3_000_000.0   #: notional per order
    max_market_krw: Annotated[float, Field(ge=5000.0, le=1e12)] = 5_000_000.0  #: notional held per market
    max_drawdown_pct: Annotated[float, Field(gt=0.0, le=100.0)] = 15.0   #: below the equity high-water mark: disarm
    on_leave: Literal["sell", "hold"] = "sell"    #: a market that leaves the tradable top N: sell, or hold
    #: a daily loss or drawdown trip: sell every position at market, then disarm ("flatten"), or only disarm
    #: ("hold": DISARMED sends no order, so the positions keep no stop-loss until ARM or `smtm exit`)
    on_risk_trip: Literal["flatten", "hold"] = "flatten"
    spin_us: Annotated[float, Field(ge=0.0, le=100_000.0)] = 200.0
    park_timeout_s: Annotated[float, Field(ge=0.001, le=1.0)] = 0.25
    #: evaluations and marks are committed together at most this often (orders at once, before the broker)
    commit_interval_s: Annotated[float, Field(ge=0.0, le=10.0)] = 0.1
    max_frame_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20   #: command socket frame limit
    max_clients: Annotated[int, Field(ge=1, le=1024)] = 128
    #: events queued per EVENT.SUBSCRIBE client before it is dropped
    subscriber_queue: Annotated[int, Field(ge=16, le=1 << 20)] = 4096
    upbit: UpbitBrokerConfig = UpbitBrokerConfig()

    @model_validator(mode="after")
    def _limits(self):
        if self.max_order_krw > self.max_market_krw:
            raise ValueError(f"trader.max_order_krw = {self.max_order_krw} is more than trader.max_market_krw = "
                             f"{self.max_market_krw}")
        if self.min_order_krw > self.max_order_krw:
            raise ValueError(f"trader.min_order_krw = {self.min_order_krw} is more than trader.max_order_krw = "
                             f"{self.max_order_krw}")
        try:
            resolve(self.preset, self.strategy.overrides())
        except ValidationError as e:
            why = "; ".join(er["msg"].removeprefix("Value error, ") for er in e.errors())
            raise ValueError(f"trader.strategy with preset {self.preset}: {why}") from None
        return self

    def params(self) -> StrategyParams:
        """The configured preset with ``[trader.strategy]`` applied."""
        return resolve(self.preset, self.strategy.overrides())


class MonitorConfig(Section):
    fps: Annotated[int, Field(ge=1, le=240)] = 60             #: render timer rate with a display
    headless_fps: Annotated[int, Field(ge=1, le=120)] = 10    #: off-screen frame rate without a display
    snapshot_interval_s: Annotated[float, Field(ge=0.1, le=3600.0)] = 3.0
    candles_shown: Annotated[int, Field(ge=10, le=2000)] = 200
    width: Annotated[int, Field(ge=200, le=8192)] = 1280
    height: Annotated[int, Field(ge=150, le=8192)] = 720
    market: MarketCode = "KRW-BTC"
    timeframe: Timeframe = "30m"
    #: how the window shows a frame: "gl" draws into a QOpenGLWidget (a GPU composes it); "image" renders
    #: off-screen (EGL) and paints the pixels into a plain Qt widget — with software OpenGL (llvmpipe) half the CPU
    #: a frame, since Qt's composition of a GL widget is itself software then; "auto" = "image" where no GPU is
    #: found (render/app.py: software_gl)
    present: Literal["auto", "gl", "image"] = "auto"


class GatewayConfig(Section):
    """The read-only gateway for remote observers (``procs.gateway``): where it listens. Port 0 takes a free port;
    the one bound is published in ``run/<instance>/gateway.json`` either way (``smtm status`` and the tests read
    it). Keep ``host`` on loopback and reach it through an SSH tunnel from elsewhere (README)."""
    host: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z.:\-]{1,253}$")] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8787
    #: most candles one /api/candles answer carries
    max_candles: Annotated[int, Field(ge=1, le=100_000)] = 2000
    #: messages a WebSocket client may fall behind before it is dropped (close code 4008)
    client_queue: Annotated[int, Field(ge=1, le=100_000)] = 256
    #: how often the WebSocket channels look at shared memory (s)
    poll_s: Annotated[float, Field(ge=0.005, le=5.0)] = 0.05
    #: WebSocket keep-alive: a ping this often, the connection closed if no pong within as long (s)
    ping_s: Annotated[float, Field(ge=1.0, le=300.0)] = 20.0
    #: surge alerts (procs/market/surge.py): the timeframe ("" = the finest of shm.timeframes), the candles the
    #: return and traded value are measured over, the candles before them whose mean traded value is the
    #: reference, and the two thresholds
    surge_tf: Literal["", "1m", "3m", "5m", "10m", "15m", "30m", "1h", "4h", "1d"] = ""
    surge_window: Annotated[int, Field(ge=1, le=1000)] = 2
    surge_baseline: Annotated[int, Field(ge=1, le=1000)] = 24
    surge_min_return_pct: Annotated[float, Field(gt=0.0, le=1000.0)] = 5.0
    surge_min_value_ratio: Annotated[float, Field(gt=0.0, le=1000.0)] = 3.0


class LatencyConfig(Section):
    """Per-stage latency samples (CLOCK_MONOTONIC, from a trade's arrival in ingest), for the benchmarks: ingest,
    the indicator and the trader each keep the newest ``samples`` of their stage and write them to
    ``run/<instance>/latency/<process>.npz`` when they stop. 0 = not measured."""
    samples: Annotated[int, Field(ge=0, le=50_000_000)] = 0


@dataclass(frozen=True)
class BaseConfig:
    """What every process gets: which instance, where its run files go, its markets and tables."""
    profile: str
    instance: str
    run_dir: Path
    markets: tuple[str, ...]
    shm: ShmConfig
    latency: LatencyConfig = LatencyConfig()

    @property
    def finest_timeframe(self) -> str:
        return min(self.shm.timeframes, key=tf_seconds)


class Config(Section):
    """The whole configuration (only the loader and the CLI hold it; processes get sections)."""
    profile: Literal["replay", "live"]
    instance: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,40}$")] = "default"
    markets: MarketsConfig
    shm: ShmConfig = ShmConfig()
    upbit: UpbitConfig = UpbitConfig()
    exchange: ExchangeConfig = ExchangeConfig()
    ingest: IngestConfig = IngestConfig()
    indicator: IndicatorConfig = IndicatorConfig()
    signals: SignalsConfig = SignalsConfig()
    symbols: SymbolsConfig = SymbolsConfig()
    monitor: MonitorConfig = MonitorConfig()
    gateway: GatewayConfig = GatewayConfig()
    trader: TraderConfig = TraderConfig()
    latency: LatencyConfig = LatencyConfig()

    @model_validator(mode="after")
    def _across_sections(self):
        tfs = self.shm.timeframes
        if len(self.markets.codes) > self.shm.rows:
            raise ValueError(f"shm.rows = {self.shm.rows} is less than the {len(self.markets.codes)} markets "
                             f"in markets.codes")
        fine = min(tfs, key=tf_seconds)
        if tf_seconds(fine) > TIMEFRAMES["4h"]:
            raise ValueError(f"shm.timeframes = {', '.join(tfs)}: the finest timeframe ({fine}) is built from trades "
                             f"and repaired from REST minute candles, so it must be 4h or finer")
        for tf in tfs:
            if tf_seconds(tf) % tf_seconds(fine):
                raise ValueError(f"shm.timeframes = {', '.join(tfs)}: {tf} is not a multiple of the finest, {fine} "
                                 f"(coarser candles are rolled up from it)")
        if self.symbols.top_n > self.shm.rows:
            raise ValueError(f"symbols.top_n = {self.symbols.top_n} is more than shm.rows = {self.shm.rows}")
        for key, tf in (("signals.timeframe", self.signals.timeframe), ("monitor.timeframe", self.monitor.timeframe),
                        ("gateway.surge_tf", self.gateway.surge_tf)):
            if tf and tf not in tfs:
                raise ValueError(f"{key} = {tf!r}: allowed values are the tables' timeframes shm.timeframes = "
                                 f"{', '.join(tfs)}")
        if self.symbols.candidates == "config" and self.monitor.market not in self.markets.codes:
            raise ValueError(f"monitor.market = {self.monitor.market!r}: allowed values are markets.codes = "
                             f"{', '.join(self.markets.codes)}")
        for key in ("ws_url", "rest_url"):
            if getattr(self.upbit, key) == "auto" and not self.exchange.enabled:
                raise ValueError(f"upbit.{key} = 'auto' names the replay exchange, but exchange.enabled = false; "
                                 f"give the URL (e.g. wss://api.upbit.com/websocket/v1)")
        if self.exchange.enabled:
            self._check_replay_data()
        self._check_shm_fits()
        return self

    def _check_replay_data(self) -> None:
        """What the replay exchange will read exists (file names only: no CSV is parsed here)."""
        ex = self.exchange
        if ex.start and ex.end and ex.start >= ex.end:
            raise ValueError(f"exchange.start = {ex.start!r} must be before exchange.end = {ex.end!r}")
        if ex.recording:
            pattern = ex.recording if Path(ex.recording).is_absolute() else str(ROOT / ex.recording)
            if not glob.glob(pattern):
                raise ValueError(f"exchange.recording = {ex.recording!r}: no file matches {pattern}")
            return
        d = self.data_path() / "minute30"
        if not d.is_dir():
            raise ValueError(f"exchange.data_dir = {ex.data_dir!r}: {d} is not a directory of Upbit minute-candle CSVs")
        have = {f.name.split("_")[0] for f in d.glob("*.csv*")}
        missing = [m for m in self.markets.codes if m not in have]
        if missing:
            raise ValueError(f"markets.codes: the replay exchange has no data for {', '.join(missing)} in {d} "
                             f"(it has {', '.join(sorted(have))})")

    def _check_shm_fits(self) -> None:
        sh = self.shm
        need = sum(table_sizes(sh.timeframes, sh.rows, sh.capacity, STATUS_ROWS, trades_capacity=sh.trades_capacity,
                               orders_rows=sh.orders_rows, timeline_capacity=sh.timeline_capacity).values())
        try:
            st = os.statvfs("/dev/shm")
        except OSError:
            return  # no /dev/shm to measure (not Linux)
        total = st.f_blocks * st.f_frsize
        if need > total:
            raise ValueError(f"shm.rows = {self.shm.rows} x shm.capacity = {self.shm.capacity} x "
                             f"{len(self.shm.timeframes)} timeframes needs {need / 2**20:,.0f} MiB of shared memory; "
                             f"/dev/shm holds {total / 2**20:,.0f} MiB")

    @property
    def signal_timeframe(self) -> str:
        """The timeframe buy signals are evaluated on (``signals.timeframe`` or the finest)."""
        return self.signals.on(self.base)

    @property
    def run_dir(self) -> Path:
        """Where this instance keeps its run-time files: ``$SMTM_RUN_DIR/<instance>`` or
        ``run/<instance>`` in the repository."""
        return Path(os.environ.get("SMTM_RUN_DIR", ROOT / "run")) / self.instance

    @property
    def base(self) -> BaseConfig:
        return BaseConfig(self.profile, self.instance, self.run_dir, self.markets.codes, self.shm, self.latency)

    def data_path(self) -> Path:
        p = Path(self.exchange.data_dir)
        return p if p.is_absolute() else ROOT / p
