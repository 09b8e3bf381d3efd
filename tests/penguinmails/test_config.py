"""A configuration is validated once, at start, and a bad key is named with its source."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from penguinmails.config import ConfigError, Settings, load_settings, split_hostport
from tests.helpers import ROOT

DEFAULT_CONFIG = ROOT / "configs" / "penguinmails.toml"


def write(tmp_path, text: str):
    path = tmp_path / "penguinmails.toml"
    path.write_text(text)
    return path


def test_file_values_and_environment_overrides(tmp_path):
    path = write(
        tmp_path, '[api]\nlisten = "0.0.0.0:9000"\n[mta.routes]\n"Example.org" = "127.0.0.1:2525"\n'
    )
    settings = load_settings(
        path,
        environ={
            "PENGUINMAILS_DATABASE__URL": "postgresql://db.internal/pm",
            "PENGUINMAILS_MTA__BATCH_SIZE": "50",
            "PENGUINMAILS_MTA__THROTTLE__GMAIL.COM__MAX_CONNECTIONS": "3",
        },
    )
    assert settings.api.listen == "0.0.0.0:9000"
    assert settings.mta.routes == {"example.org": "127.0.0.1:2525"}
    assert settings.database.url == "postgresql://db.internal/pm"
    assert settings.mta.batch_size == 50
    assert settings.mta.rule_for("gmail.com").max_connections == 3
    assert settings.mta.rule_for("other.test").max_connections == 10


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[mta]\nbatch_size = 'lots'\n", "mta.batch_size"),
        ("[mta]\nbatchsize = 10\n", "mta.batchsize: unknown key"),
        ("[api]\nlisten = 'localhost'\n", "api.listen"),
        ("[api]\nmetrics_listen = 'localhost'\n", "api.metrics_listen: Value error"),
        ("[tracker]\nmetrics_listen = '9104'\n", "tracker.metrics_listen: Value error"),
        ("[mta.routes]\n'example.org' = 'nohost'\n", "mta.routes"),
        (
            "[mta.throttle.'gmail.com']\nmax_connections = 0\n",
            "mta.throttle.gmail.com.max_connections",
        ),
        ("[nosuchsection]\nx = 1\n", "nosuchsection: unknown key"),
        ("[mta]\nprocesses = 0\n", "mta.processes: Value error"),
        ("[mta]\nprocesses = 'many'\n", "mta.processes: Value error"),
        ("[mta]\nprocesses = true\n", "mta.processes: Value error"),
        ("[mta]\nprocesses = 2.5\n", "mta.processes: Value error"),
        ("[retention]\nmessages_days = 7\n", "retention.messages_days"),
        ("[retention.tenants.acme]\nmessages_days = 7\n", "retention.tenants.acme.messages_days"),
        ("[retention]\nevents_days = 10\n", "events_days (10) must be at least"),
        (
            "[retention.tenants.acme]\nevents_days = 10\n",
            "retention.tenants.acme.events_days (10) must be at least",
        ),
    ],
)
def test_a_bad_key_is_named_with_its_file(tmp_path, text, named):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert named in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_bad_environment_override_names_the_key():
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"PENGUINMAILS_MTA__MAX_IN_FLIGHT": "-1"})
    assert "mta.max_in_flight" in str(caught.value)
    assert "environment" in str(caught.value)


def test_toml_syntax_errors_and_missing_files_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[mta\n"), environ={})
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_the_cli_refuses_to_start_on_a_bad_config(tmp_path):
    path = write(tmp_path, "[mta]\nmax_in_flight = 'many'\n")
    result = subprocess.run(
        [sys.executable, "-m", "penguinmails.cli", "--config", str(path), "mta"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "mta.max_in_flight" in result.stderr
    assert str(path) in result.stderr


def test_every_role_serves_metrics_on_its_own_loopback_address_by_default():
    settings = Settings()
    listens = {
        "api": settings.api.metrics_listen,
        "tracker": settings.tracker.metrics_listen,
        "mta": settings.mta.metrics_listen,
        "inbound": settings.inbound.metrics_listen,
    }
    for role, listen in listens.items():
        assert split_hostport(listen)[0] == "127.0.0.1", role
    public = {settings.api.listen, settings.tracker.listen, settings.inbound.listen}
    assert len(set(listens.values())) == 4 and not public & set(listens.values())


def test_metrics_can_be_switched_off_per_role():
    settings = load_settings(
        None,
        environ={
            "PENGUINMAILS_API__METRICS_LISTEN": "",
            "PENGUINMAILS_TRACKER__METRICS_LISTEN": "",
        },
    )
    assert settings.api.metrics_listen == "" and settings.tracker.metrics_listen == ""


@pytest.mark.parametrize(
    "dotted",
    [
        "api.metrics_listen",
        "tracker.metrics_listen",
        "mta.metrics_listen",
        "mta.processes",
        "mta.mta_sts",
        "mta.tls_ca_file",
        "mta.shaping_file",
        "mta.default_pool",
        "mta.tenant_pools",
        "security.secret_keys",
        "security.key_file",
        "retention.webhook_deliveries_days",
        "retention.messages_days",
        "retention.events_days",
        "retention.ahead_days",
        "retention.archive_batch",
    ],
)
def test_the_default_config_documents_the_key_with_its_default(dotted):
    section, key = dotted.split(".")
    documented = tomllib.loads(DEFAULT_CONFIG.read_text())[section]
    assert key in documented, dotted
    default = getattr(getattr(Settings(), section), key)
    assert documented[key] == ("" if default is None else default), dotted


@pytest.mark.parametrize(
    ("value", "expected"), [("'auto'", "auto"), ("'AUTO'", "auto"), ("3", 3), ("'2'", 2)]
)
def test_mta_processes_is_a_count_or_auto(tmp_path, value, expected):
    settings = load_settings(write(tmp_path, f"[mta]\nprocesses = {value}\n"), environ={})
    assert settings.mta.processes == expected


def test_auto_processes_is_one_per_core_this_process_may_use():
    import os

    auto = load_settings(None, environ={"PENGUINMAILS_MTA__PROCESSES": "auto"})
    assert auto.mta.worker_count() == len(os.sched_getaffinity(0))
    assert load_settings(None, environ={"PENGUINMAILS_MTA__PROCESSES": "2"}).mta.worker_count() == 2
    assert Settings().mta.worker_count() == 1  # the default: one process, no supervisor


def test_a_relative_shaping_file_is_read_beside_the_configuration(tmp_path, monkeypatch):
    path = write(tmp_path, '[mta]\nshaping_file = "rules/shaping.toml"\n')
    monkeypatch.chdir("/")
    settings = load_settings(path, environ={})
    assert settings.mta.shaping_file == str(tmp_path / "rules" / "shaping.toml")
    absolute = write(tmp_path, '[mta]\nshaping_file = "/etc/shaping.toml"\n')
    assert load_settings(absolute, environ={}).mta.shaping_file == "/etc/shaping.toml"


def test_a_tenant_keeps_its_own_retention_and_the_defaults_for_the_rest(tmp_path):
    path = write(
        tmp_path,
        "[retention]\nmessages_days = 60\n[retention.tenants.acme]\nmessages_days = 365\n",
    )
    retention = load_settings(path, environ={}).retention
    assert retention.days("messages", "acme") == 365
    assert retention.days("events", "acme") == 90  # unset: the default
    assert retention.days("messages", "other") == 60
