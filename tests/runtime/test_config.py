"""A bad configuration value stops start-up with a message naming the key."""
import pytest

from procs.runtime.config import ConfigError, load_config


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
])
def test_bad_value_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load_config("replay", overlay=overlay(tmp_path, text))
    assert key in str(e.value)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="allowed values are replay, live"):
        load_config("paper")


def test_process_exits_naming_the_key(env):
    env.overlay.write_text("[ingest]\nping_interval_s = 500.0\n")
    p = env.start("ingest")
    assert p.wait(timeout=30) == 2
    assert "ingest.ping_interval_s" in env.log("ingest")
