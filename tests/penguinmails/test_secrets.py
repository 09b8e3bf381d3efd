"""Where the server key comes from: [security] secret_keys, then [security] key_file, then the
systemd credential `penguinmails-secret-key`, then a key generated once under the data dir.
Only that last one is ever written; a source that is set but unusable stops the process at
start with a message naming it."""

from __future__ import annotations

import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from penguinmails.config import ConfigError, load_settings
from penguinmails.secrets import CREDENTIAL, KEY_FILE, KeyedMac, server_keys


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "secret.key"
    path.parent.mkdir()
    path.write_bytes(b"file-key-new\nfile-key-old\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    """What systemd's LoadCredential= makes: a directory with the credential file in it."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / CREDENTIAL).write_bytes(b"credential-key\n")
    (directory / CREDENTIAL).chmod(0o400)
    return directory


def _load(data_dir: Path, **environ: str):
    env = {"PENGUINMAILS_PATHS__DATA_DIR": str(data_dir), **environ}
    return load_settings(None, environ=env), env


def test_nothing_configured_generates_a_key_once_under_the_data_dir(data_dir, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    settings, _ = _load(data_dir)
    (key,) = server_keys(settings)
    path = data_dir / KEY_FILE
    assert path.read_bytes() == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert server_keys(settings) == [key]


def test_secret_keys_win_over_every_other_source(data_dir, key_file, credentials, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings, _ = _load(
        data_dir,
        PENGUINMAILS_SECURITY__SECRET_KEYS='["config-key"]',
        PENGUINMAILS_SECURITY__KEY_FILE=str(key_file),
        CREDENTIALS_DIRECTORY=str(credentials),
    )
    assert server_keys(settings) == [b"config-key"]
    assert not data_dir.exists()


def test_key_file_wins_over_the_credential_and_is_only_read(
    data_dir, key_file, credentials, monkeypatch
):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    before = key_file.stat()
    settings, _ = _load(
        data_dir,
        PENGUINMAILS_SECURITY__KEY_FILE=str(key_file),
        CREDENTIALS_DIRECTORY=str(credentials),
    )
    assert settings.security.key_file == key_file
    # One key a line, newest first, as secret_keys: a key can be rotated in the file.
    assert server_keys(settings) == [b"file-key-new", b"file-key-old"]
    assert key_file.stat().st_mtime_ns == before.st_mtime_ns
    assert not data_dir.exists()


def test_key_file_from_the_config_file(tmp_path, data_dir, key_file, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = tmp_path / "penguinmails.toml"
    config.write_text(f'[paths]\ndata_dir = "{data_dir}"\n[security]\nkey_file = "{key_file}"\n')
    assert server_keys(load_settings(config, environ={})) == [b"file-key-new", b"file-key-old"]


def test_the_systemd_credential_wins_over_the_generated_key(data_dir, credentials, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings, _ = _load(data_dir, CREDENTIALS_DIRECTORY=str(credentials))
    assert server_keys(settings) == [b"credential-key"]
    assert not data_dir.exists()


def test_a_credentials_directory_without_ours_falls_back_to_the_generated_key(
    data_dir, tmp_path, monkeypatch
):
    other = tmp_path / "other-credentials"
    other.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(other))
    settings, _ = _load(data_dir, CREDENTIALS_DIRECTORY=str(other))
    (key,) = server_keys(settings)
    assert (data_dir / KEY_FILE).read_bytes() == key


def test_an_empty_key_file_setting_means_unset(data_dir, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    settings, _ = _load(data_dir, PENGUINMAILS_SECURITY__KEY_FILE="")
    assert settings.security.key_file is None


@pytest.mark.parametrize(
    ("prepare", "says"),
    [
        (lambda p: p.unlink(), "does not exist"),
        (lambda p: p.chmod(0o640), "group or others"),
        (lambda p: p.chmod(0o604), "group or others"),
        (lambda p: p.chmod(0o620), "group or others"),
        (lambda p: p.write_bytes(b"\n  \n"), "holds no key"),
        (lambda p: (p.unlink(), p.mkdir()), "not a regular file"),
    ],
    ids=["missing", "group-readable", "world-readable", "group-writable", "empty", "directory"],
)
def test_an_unusable_key_file_is_a_configuration_error_naming_it(data_dir, key_file, prepare, says):
    prepare(key_file)
    with pytest.raises(ConfigError) as caught:
        _load(data_dir, PENGUINMAILS_SECURITY__KEY_FILE=str(key_file))
    message = str(caught.value)
    assert "security.key_file" in message and str(key_file) in message and says in message
    assert not data_dir.exists()  # no fallback to a generated key


def test_a_key_file_is_checked_even_where_secret_keys_take_precedence(data_dir, tmp_path):
    missing = tmp_path / "nowhere" / "secret.key"
    with pytest.raises(ConfigError, match=r"security\.key_file"):
        _load(
            data_dir,
            PENGUINMAILS_SECURITY__SECRET_KEYS='["config-key"]',
            PENGUINMAILS_SECURITY__KEY_FILE=str(missing),
        )


def test_an_empty_credential_is_a_configuration_error_naming_it(data_dir, credentials):
    (credentials / CREDENTIAL).chmod(0o600)
    (credentials / CREDENTIAL).write_bytes(b"")
    with pytest.raises(ConfigError) as caught:
        _load(data_dir, CREDENTIALS_DIRECTORY=str(credentials))
    assert CREDENTIAL in str(caught.value) and "holds no key" in str(caught.value)


def test_an_unreadable_key_file_is_a_configuration_error(data_dir, key_file):
    # A path through a regular file cannot be opened even by root (ENOTDIR), as CI runs.
    unreadable = key_file / "key"
    with pytest.raises(ConfigError, match=r"security\.key_file: .*cannot be read"):
        _load(data_dir, PENGUINMAILS_SECURITY__KEY_FILE=str(unreadable))


def test_a_role_refuses_to_start_on_a_group_readable_key_file(tmp_path, key_file):
    key_file.chmod(0o644)
    config = tmp_path / "penguinmails.toml"
    config.write_text(f'[security]\nkey_file = "{key_file}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    result = subprocess.run(
        [sys.executable, "-m", "penguinmails.cli", "--config", str(config), "mta"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "security.key_file" in result.stderr and str(key_file) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("key_size", [0, 16, 32, 64, 65, 200])
def test_the_keyed_mac_is_hmac_sha256_for_keys_of_every_length(key_size):
    key = os.urandom(key_size)
    mac = KeyedMac(key)
    for message in (b"", b"c\x1f42\x1fhttps://example.com/", os.urandom(300)):
        assert mac.digest(message) == hmac.digest(key, message, "sha256")
    # Reused: each digest starts from the key's states, not from the last message.
    assert mac.digest(b"once") == mac.digest(b"once") != mac.digest(b"twice")
