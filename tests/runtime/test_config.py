"""A bad configuration value stops start-up with a message naming the key."""
import pytest

from procs.runtime.config import ConfigError
from procs.runtime.loader import load_config
from shm.segment import list_instance_objects


def overlay(tmp_path, text):
    p = tmp_path / "o.toml"
    p.write_text(text)
    return p


def test_profiles_load():
    assert load_config("replay").shm.timeframes == ("30m", "4h", "1d")
    live = load_config("live")
    assert live.upbit.ws_url.startswith("wss://") and not live.exchange.enabled


@pytest.mark.parametrize("text, key", [
    ("[shm]\ntimeframes = ['30m', '7m']", "shm.timeframes[1]"),
    ("[ingest]\nformat = 'XML'", "ingest.format"),
    ("[shm]\ncapacity = 'big'", "shm.capacity"),
    ("[shm]\ncapacity = 4", "shm.capacity"),
    ("[exchange]\nspeed = -1.0", "exchange.speed"),
    ("[monitor]\nfsp = 60", "monitor.fsp"),
    ("[markets]\ncodes = ['KRW-BTC', 'btc']", "markets.codes[1]"),
    ("[indicator]\nema_fast = 30", "indicator.ema_fast"),
    # values that used to be accepted and fail later (regressions)
    ("[upbit]\nws_url = 'htp://127.0.0.1:1/websocket/v1'", "upbit.ws_url"),
    ("[upbit]\nrest_url = ''", "upbit.rest_url"),
    ("[exchange]\ndata_dir = 'no/such/dir'", "exchange.data_dir"),
    ("[markets]\ncodes = ['KRW-BTC', 'KRW-ETH', 'KRW-BTC']", "markets.codes"),
    ("[monitor]\nmarket = 'KRW-DOT'", "monitor.market"),
    ("[shm]\nrows = 4096\ncapacity = 1048576", "shm.capacity"),
    ("[exchange]\nenabled = false", "upbit.ws_url"),          # 'auto' needs the replay exchange
    ("[shm]\ntimeframes = ['3m', '5m']", "shm.timeframes"),   # 5m is no roll-up of 3m candles
    ("[shm]\ntimeframes = ['1d']", "shm.timeframes"),         # REST minute candles cannot repair days
    ("[symbols]\ntop_n = 40", "symbols.top_n"),                # more than the tables' rows
    ("[exchange]\nrecording = '/nonexistent/*.jsonl.gz'", "exchange.recording"),
    ("[markets]\ncodes = ['KRW-BTC', 'KRW-FOO']", "markets.codes"),   # no replay data for it
    ("[exchange]\nstart = '2025-01-01'\nend = '2024-12-01'", "exchange.start"),
    ("[ingest]\nping_interval_s = 5.0", "ingest.ping_interval_s"),  # <= ping_timeout_s: never answered
])
def test_bad_value_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load_config("replay", overlay=overlay(tmp_path, text))
    assert key in str(e.value)


def test_allowed_values_are_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config("replay", overlay=overlay(tmp_path, "[ingest]\nformat = 'XML'"))
    assert "allowed values are 'DEFAULT', 'SIMPLE', 'JSON_LIST' or 'SIMPLE_LIST'" in str(e.value)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="allowed values are replay, live"):
        load_config("paper")


@pytest.mark.parametrize("program, text, key", [
    ("ingest", "[ingest]\nping_interval_s = 500.0\n", "ingest.ping_interval_s"),
    ("ingest", "[upbit]\nws_url = 'htp://x'\n", "upbit.ws_url"),
    ("exchange", "[exchange]\ndata_dir = 'missing'\n", "exchange.data_dir"),
])
def test_a_program_exits_naming_the_key_before_touching_shared_memory(env, program, text, key):
    env.overlay.write_text(text)
    p = env.start(program)
    assert p.wait(timeout=30) == 2
    assert key in env.log(program) and "Traceback" not in env.log(program)
    assert list_instance_objects(env.instance) == []
