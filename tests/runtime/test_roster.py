"""The roster is THE list of programs: supervisord.conf, the status table and the CLI follow it."""
import configparser
import re

from procs.cli.supervisor import expected_programs
from procs.runtime.loader import load_config
from procs.runtime.roster import PROGRAMS, STATUS_ROWS, WAKE_CONSUMERS, program
from tests.helpers import ROOT


def test_supervisord_conf_has_exactly_the_roster():
    cp = configparser.RawConfigParser()
    cp.read(ROOT / "supervisord.conf")
    sections = {s.split(":", 1)[1]: cp[s] for s in cp.sections() if s.startswith("program:")}
    assert list(sections) == [p.name for p in PROGRAMS]
    for p in PROGRAMS:
        sec = sections[p.name]
        assert re.fullmatch(rf"\S+/python -m {re.escape(p.module)}", sec["command"]), sec["command"]
        assert int(sec["priority"]) == p.priority
        assert sec["autostart"] == ("%(ENV_SMTM_REPLAY)s" if p.replay_only else "true")
        assert sec["autorestart"] == "true" and int(sec["startsecs"]) >= 1
        assert f"/run/%(ENV_SMTM_INSTANCE)s/logs/{p.name}.log" in sec["stdout_logfile"]
    for key in ("logfile", "pidfile", "childlogdir"):
        assert "%(ENV_SMTM_INSTANCE)s" in cp["supervisord"][key], key
    assert "%(ENV_SMTM_INSTANCE)s" in cp["unix_http_server"]["file"]


def test_status_rows_wake_consumers_and_the_cli_follow_the_roster():
    assert tuple(p.name for p in PROGRAMS) == STATUS_ROWS
    for producer, consumers in WAKE_CONSUMERS.items():
        assert all(program(n) for n in (producer, *consumers))
    assert expected_programs(load_config("replay")) == list(STATUS_ROWS)
    assert "exchange" not in expected_programs(load_config("live"))


def test_the_buy_rules_of_the_config_are_the_rules_of_the_market():
    from typing import get_args

    from procs.market.signals import RULES
    from procs.runtime.config import SignalRule
    assert set(get_args(SignalRule)) == set(RULES)
