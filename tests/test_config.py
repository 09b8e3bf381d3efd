"""A configuration is validated once, at start, and a bad key is named with its source."""

from __future__ import annotations

import subprocess
import sys

import pytest

from penguinmails.config import ConfigError, load_settings


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
        ("[mta.routes]\n'example.org' = 'nohost'\n", "mta.routes"),
        (
            "[mta.throttle.'gmail.com']\nmax_connections = 0\n",
            "mta.throttle.gmail.com.max_connections",
        ),
        ("[nosuchsection]\nx = 1\n", "nosuchsection: unknown key"),
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
