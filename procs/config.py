"""Configuration: TOML in ``conf/`` (``default.toml`` plus a profile), validated at start.

Load order (later wins): ``conf/default.toml`` → ``conf/<profile>.toml`` → the file named
by ``SMTM_CONFIG`` (an overlay, used by tests) → environment (``SMTM_INSTANCE``).
The profile comes from the argument, else ``SMTM_PROFILE``, else ``replay``.

Every value is checked; a bad one raises :class:`ConfigError` naming the key, the
value and what is allowed, and the process stops before touching shared memory.
Unknown keys are errors too (a typo must not silently fall back to a default).
API keys never come from here (DESIGN §6): only from the environment.
"""
from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
PROFILES = ("replay", "live")

#: Supported timeframes → seconds. Candle starts are multiples of this in UTC
#: (Upbit aligns 4 h candles to 00/04/08/.. UTC = 01/05/09.. KST, days to 00:00 UTC).
TIMEFRAMES = {"1m": 60, "3m": 180, "5m": 300, "10m": 600, "15m": 900, "30m": 1800,
              "1h": 3600, "4h": 14400, "1d": 86400}

_MARKET_RE = re.compile(r"^KRW-[A-Z0-9]{1,12}$")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def tf_seconds(tf: str) -> int:
    """Seconds of a timeframe name such as ``"30m"``; raises ConfigError for others."""
    try:
        return TIMEFRAMES[tf]
    except KeyError:
        raise ConfigError(f"unknown timeframe {tf!r}: allowed values are {', '.join(TIMEFRAMES)}") from None


@dataclass(frozen=True)
class ShmConfig:
    rows: int = 32            #: market rows per table
    capacity: int = 2048      #: records per ring (each timeframe)


@dataclass(frozen=True)
class ExchangeConfig:
    """The replay exchange (an Upbit-compatible server on loopback)."""
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: str = "data/upbit"   #: relative to the repository root unless absolute
    speed: float = 1800.0          #: replay-time seconds per wall second; 0 = as fast as consumers keep up
    trades_per_candle: int = 6     #: synthesized trades per source candle (>= 4)
    rest_per_second: int = 10      #: REST requests per second and group before 429 (Upbit: 10)
    recording: str = ""            #: replay this recording (path or glob) instead of the bundled candles
    start: str = ""                #: replay only candles from this UTC day (YYYY-MM-DD) ...
    end: str = ""                  #: ... up to (not including) this one


@dataclass(frozen=True)
class IngestConfig:
    ws_url: str = "ws://127.0.0.1:8765/websocket/v1"
    rest_url: str = "http://127.0.0.1:8765"
    timeframes: tuple[str, ...] = ("30m", "4h", "1d")
    format: str = "SIMPLE"          #: WebSocket format requested: DEFAULT or SIMPLE
    ping_interval_s: float = 30.0   #: WebSocket ping-frame period (Upbit closes after 120 s idle)
    ping_timeout_s: float = 10.0
    keepalive_s: float = 10.0       #: send the text ``PING`` (answered ``{"status":"UP"}``) this often
    stall_timeout_s: float = 15.0   #: no frame at all for this long = stalled: reconnect
    backoff_base_s: float = 0.5     #: first reconnect delay; doubles per failed attempt ...
    backoff_cap_s: float = 30.0     #: ... up to this, each with +-50 % jitter
    max_connects_per_s: float = 5.0  #: Upbit: 5 connection attempts per second
    dedupe_window: int = 8192       #: sequential_ids remembered per market to drop duplicates
    subscribe_ticker: bool = False  #: also subscribe to ``ticker`` (live profile)
    record: bool = False            #: record every received frame (procs.recording)
    record_dir: str = ""            #: where; "" = <run dir>/recordings
    record_rotate_s: float = 600.0
    record_rotate_mb: float = 64.0
    heartbeat_s: float = 0.25


@dataclass(frozen=True)
class IndicatorConfig:
    ema_fast: int = 12
    ema_slow: int = 26
    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bb_period: int = 20
    bb_k: float = 2.0               #: band width in population standard deviations
    spin_us: float = 200.0          #: spin budget before parking on the semaphore
    park_timeout_s: float = 0.25    #: longest block while parked (heartbeat period)


@dataclass(frozen=True)
class SignalsConfig:
    """Buy signals (procs.signals), evaluated on candle close of ``timeframe``."""
    timeframe: str = ""                           #: "" = the finest ingest timeframe
    rules: tuple[str, ...] = ("macd_cross_rsi_bb",)
    rsi_max: float = 70.0                         #: RSI bound of macd_cross_rsi_bb


@dataclass(frozen=True)
class SymbolsConfig:
    """The symbol manager (procs.symbols); intervals in market time."""
    top_n: int = 8
    min_stable_s: float = 1800.0
    rank_interval_s: float = 600.0
    safety_interval_s: float = 3600.0
    poll_s: float = 1.0
    candidates: str = "config"      #: "config" = markets.codes; "all" = every KRW market


@dataclass(frozen=True)
class MonitorConfig:
    fps: int = 60                   #: render timer rate with a display
    headless_fps: int = 10          #: off-screen frame rate without a display
    snapshot_interval_s: float = 3.0
    candles_shown: int = 200
    width: int = 1280
    height: int = 720
    market: str = "KRW-BTC"
    timeframe: str = "30m"


@dataclass(frozen=True)
class Config:
    profile: str
    instance: str
    markets: tuple[str, ...]
    shm: ShmConfig = field(default_factory=ShmConfig)
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    indicator: IndicatorConfig = field(default_factory=IndicatorConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    symbols: SymbolsConfig = field(default_factory=SymbolsConfig)

    @property
    def signal_timeframe(self) -> str:
        """The timeframe buy signals are evaluated on (``signals.timeframe`` or the finest)."""
        return self.signals.timeframe or min(self.ingest.timeframes, key=tf_seconds)

    @property
    def run_dir(self) -> Path:
        """Where this instance keeps its run-time files (monitor snapshots, ...)."""
        base = Path(os.environ.get("SMTM_RUN_DIR", ROOT / "run"))
        return base / self.instance

    def data_path(self) -> Path:
        p = Path(self.exchange.data_dir)
        return p if p.is_absolute() else ROOT / p


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _check(key: str, value: Any, typ: type, *, lo=None, hi=None, choices=None):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise ConfigError(f"{key} = {value!r}: expected {typ.__name__}")
    if typ is float and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r}: must be a finite number")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} = {value!r}: allowed values are {', '.join(map(str, choices))}")
    if lo is not None and value < lo:
        raise ConfigError(f"{key} = {value!r}: must be >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} = {value!r}: must be <= {hi}")
    return value


_RULES: dict[str, dict[str, dict]] = {
    "shm": {"rows": dict(typ=int, lo=1, hi=4096), "capacity": dict(typ=int, lo=16, hi=1 << 20)},
    "exchange": {"enabled": dict(typ=bool), "host": dict(typ=str), "port": dict(typ=int, lo=0, hi=65535),
                 "data_dir": dict(typ=str), "speed": dict(typ=float, lo=0.0),
                 "trades_per_candle": dict(typ=int, lo=4, hi=64), "rest_per_second": dict(typ=int, lo=1, hi=1000),
                 "recording": dict(typ=str), "start": dict(typ=str), "end": dict(typ=str)},
    "ingest": {"ws_url": dict(typ=str), "rest_url": dict(typ=str), "timeframes": dict(typ=list),
               "format": dict(typ=str, choices=("DEFAULT", "SIMPLE")),
               "ping_interval_s": dict(typ=float, lo=1.0, hi=110.0),
               "ping_timeout_s": dict(typ=float, lo=0.5, hi=60.0),
               "keepalive_s": dict(typ=float, lo=0.5, hi=110.0),
               "stall_timeout_s": dict(typ=float, lo=0.5, hi=600.0),
               "backoff_base_s": dict(typ=float, lo=0.01, hi=60.0),
               "backoff_cap_s": dict(typ=float, lo=0.01, hi=600.0),
               "max_connects_per_s": dict(typ=float, lo=0.1, hi=5.0),
               "dedupe_window": dict(typ=int, lo=16, hi=1_000_000),
               "subscribe_ticker": dict(typ=bool), "record": dict(typ=bool), "record_dir": dict(typ=str),
               "record_rotate_s": dict(typ=float, lo=1.0, hi=86400.0),
               "record_rotate_mb": dict(typ=float, lo=0.01, hi=10_000.0),
               "heartbeat_s": dict(typ=float, lo=0.01, hi=1.0)},
    "indicator": {"ema_fast": dict(typ=int, lo=2, hi=1000), "ema_slow": dict(typ=int, lo=2, hi=1000),
                  "rsi_period": dict(typ=int, lo=2, hi=1000), "macd_fast": dict(typ=int, lo=2, hi=1000),
                  "macd_slow": dict(typ=int, lo=2, hi=1000), "macd_signal": dict(typ=int, lo=1, hi=1000),
                  "bb_period": dict(typ=int, lo=2, hi=1000), "bb_k": dict(typ=float, lo=0.1, hi=10.0),
                  "spin_us": dict(typ=float, lo=0.0, hi=100_000.0),
                  "park_timeout_s": dict(typ=float, lo=0.001, hi=1.0)},
    "symbols": {"top_n": dict(typ=int, lo=1, hi=4096), "min_stable_s": dict(typ=float, lo=0.0, hi=1e7),
                "rank_interval_s": dict(typ=float, lo=0.0, hi=1e7), "safety_interval_s": dict(typ=float, lo=0.0, hi=1e7),
                "poll_s": dict(typ=float, lo=0.05, hi=600.0), "candidates": dict(typ=str, choices=("config", "all"))},
    "signals": {"timeframe": dict(typ=str), "rules": dict(typ=list), "rsi_max": dict(typ=float, lo=0.0, hi=100.0)},
    "monitor": {"fps": dict(typ=int, lo=1, hi=240), "headless_fps": dict(typ=int, lo=1, hi=120),
                "snapshot_interval_s": dict(typ=float, lo=0.1), "candles_shown": dict(typ=int, lo=10, hi=2000),
                "width": dict(typ=int, lo=200, hi=8192), "height": dict(typ=int, lo=150, hi=8192),
                "market": dict(typ=str), "timeframe": dict(typ=str, choices=tuple(TIMEFRAMES))},
}
_CLASSES = {"shm": ShmConfig, "exchange": ExchangeConfig, "ingest": IngestConfig,
            "indicator": IndicatorConfig, "monitor": MonitorConfig, "signals": SignalsConfig,
            "symbols": SymbolsConfig}


def _section(name: str, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    rules = _RULES[name]
    unknown = sorted(set(raw) - set(rules))
    if unknown:
        raise ConfigError(f"{where}: unknown key {name}.{unknown[0]}; allowed keys: {', '.join(rules)}")
    vals = {k: _check(f"{name}.{k}", v, **rules[k]) for k, v in raw.items()}
    if name == "ingest" and "timeframes" in vals:
        tfs = vals["timeframes"]
        for i, tf in enumerate(tfs):
            if tf not in TIMEFRAMES:
                raise ConfigError(f"ingest.timeframes[{i}] = {tf!r}: allowed values are {', '.join(TIMEFRAMES)}")
        if not tfs or len(set(tfs)) != len(tfs):
            raise ConfigError(f"ingest.timeframes = {tfs!r}: must be a non-empty list without repeats")
        vals["timeframes"] = tuple(tfs)
    if name == "signals" and "rules" in vals:
        from .signals import RULES
        for i, r in enumerate(vals["rules"]):
            if r not in RULES:
                raise ConfigError(f"signals.rules[{i}] = {r!r}: allowed values are {', '.join(RULES)}")
        if not vals["rules"]:
            raise ConfigError("signals.rules must name at least one rule")
        vals["rules"] = tuple(vals["rules"])
    return _CLASSES[name](**vals)


def load_config(profile: str | None = None, *, conf_dir: Path | None = None, overlay: Path | None = None) -> Config:
    """Load and validate the configuration. Raises :class:`ConfigError`."""
    profile = profile or os.environ.get("SMTM_PROFILE") or "replay"
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r}: allowed values are {', '.join(PROFILES)}")
    conf_dir = Path(conf_dir or os.environ.get("SMTM_CONF_DIR", CONF_DIR))
    files = [conf_dir / "default.toml", conf_dir / f"{profile}.toml"]
    extra = overlay or os.environ.get("SMTM_CONFIG")
    if extra:
        files.append(Path(extra))
    raw: dict = {}
    for f in files:
        raw = _merge(raw, _read_toml(f))
    where = " + ".join(str(f) for f in files)

    known = {"instance", "markets", *_RULES}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown section or key {unknown[0]!r}; allowed: {', '.join(sorted(known))}")
    instance = os.environ.get("SMTM_INSTANCE") or raw.get("instance", "default")
    if not isinstance(instance, str) or not _INSTANCE_RE.match(instance):
        raise ConfigError(f"instance = {instance!r}: 1-40 characters of letters, digits, '_' or '-'")
    markets = raw.get("markets", {}).get("codes") if isinstance(raw.get("markets"), dict) else None
    if not isinstance(markets, list) or not markets:
        raise ConfigError(f"{where}: markets.codes must be a non-empty list of KRW market codes")
    for i, m in enumerate(markets):
        if not isinstance(m, str) or not _MARKET_RE.match(m):
            raise ConfigError(f"markets.codes[{i}] = {m!r}: expected an upper-case KRW market code such as 'KRW-BTC'")
    if set(raw["markets"]) - {"codes"}:
        raise ConfigError(f"{where}: unknown key markets.{sorted(set(raw['markets']) - {'codes'})[0]}")

    sections = {name: _section(name, raw.get(name, {}), where) for name in _RULES}
    cfg = Config(profile=profile, instance=instance, markets=tuple(markets), **sections)
    if cfg.indicator.ema_fast >= cfg.indicator.ema_slow:
        raise ConfigError(f"indicator.ema_fast = {cfg.indicator.ema_fast} must be < indicator.ema_slow = {cfg.indicator.ema_slow}")
    if len(cfg.markets) > cfg.shm.rows:
        raise ConfigError(f"shm.rows = {cfg.shm.rows} is less than the {len(cfg.markets)} markets in markets.codes")
    for key in ("start", "end"):
        v = getattr(cfg.exchange, key)
        if v and not re.match(r"^\d{4}-\d{2}-\d{2}$", v):
            raise ConfigError(f"exchange.{key} = {v!r}: expected a UTC day such as '2024-11-01', or ''")
    if cfg.indicator.macd_fast >= cfg.indicator.macd_slow:
        raise ConfigError(f"indicator.macd_fast = {cfg.indicator.macd_fast} must be < indicator.macd_slow = "
                          f"{cfg.indicator.macd_slow}")
    if cfg.ingest.backoff_cap_s < cfg.ingest.backoff_base_s:
        raise ConfigError(f"ingest.backoff_cap_s = {cfg.ingest.backoff_cap_s} must be >= ingest.backoff_base_s")
    if cfg.signals.timeframe and cfg.signals.timeframe not in cfg.ingest.timeframes:
        raise ConfigError(f"signals.timeframe = {cfg.signals.timeframe!r}: allowed values are the ingest timeframes "
                          f"{', '.join(cfg.ingest.timeframes)}")
    if cfg.monitor.timeframe not in cfg.ingest.timeframes:
        raise ConfigError(f"monitor.timeframe = {cfg.monitor.timeframe!r}: allowed values are the ingest timeframes "
                          f"{', '.join(cfg.ingest.timeframes)}")
    return cfg


def process_start(prog: str, description: str, argv: list[str] | None = None, add_args=None):
    """Common start of every process: ``--profile`` (plus ``add_args(parser)``), logging, and the
    validated configuration. Returns ``(cfg, args)``, or ``(None, args)`` after logging a
    :class:`ConfigError` (the caller exits with status 2)."""
    import argparse
    import logging
    ap = argparse.ArgumentParser(prog=f"python -m procs.{prog}", description=description)
    ap.add_argument("--profile", help="configuration profile (default: SMTM_PROFILE or replay)")
    if add_args is not None:
        add_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return load_config(args.profile), args
    except ConfigError as e:
        logging.getLogger(f"smtm.{prog}").error("configuration error: %s", e)
        return None, args
