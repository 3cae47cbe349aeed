"""A token file that exists but holds no usable token says which file and what is wrong with it, never
what is in it; only a file that is not there at all is "no token found"."""

from __future__ import annotations

import errno
import json

import pytest

from runcomfy_seedream.api.config import TOKEN_FILE_MAX_BYTES, find_credentials, resolve_credentials
from runcomfy_seedream.api.errors import ConfigurationError

HIDDEN = "rc_hidden_value_5c2e9d"  # written into damaged files: never repeated in a message
GOOD = "rc_good_token_0123456789"

DAMAGED = [
    ("over 64 KiB", json.dumps({"token": HIDDEN, "padding": "x" * TOKEN_FILE_MAX_BYTES}).encode(), ["larger than 64 KiB"]),
    ("a JSON list", json.dumps([HIDDEN]).encode(), ["malformed", "a JSON list"]),
    ("a JSON number", b"12345678901", ["malformed", "a JSON number"]),
    ("JSON null", b"null", ["malformed"]),
    ("broken JSON", b'{"token": "' + HIDDEN.encode() + b'"', ["malformed", "not valid JSON"]),
    ("empty", b"", ["is empty"]),
    ("only whitespace", b" \n\t\n", ["is empty"]),
    ("no token key", json.dumps({"tokn": HIDDEN}).encode(), ['no "token" entry']),
    ("an empty token", json.dumps({"token": "  "}).encode(), ['"token" entry is empty']),
    ("a token that is not text", json.dumps({"token": 12345678901}).encode(), ['"token" entry is not text']),
    ("an empty JSON string", b'""', ["is empty"]),
    ("not UTF-8", b"\xff\xfe\x00bad" + HIDDEN.encode(), ["not UTF-8 text"]),
]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def cli_file(home):
    return home / ".config" / "runcomfy" / "token.json"


def settings_file(home):
    return home / "user" / "runcomfy_seedream" / "secrets" / "api_token.json"


def refusal(**kwargs) -> str:
    with pytest.raises(ConfigurationError) as caught:
        resolve_credentials(**kwargs)
    with pytest.raises(ConfigurationError) as again:  # the settings route asks find_credentials
        find_credentials(**kwargs)
    assert str(again.value) == str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("case,data,words", DAMAGED, ids=[case for case, _, _ in DAMAGED])
def test_a_damaged_cli_token_file_is_named_and_what_is_wrong_is_said(home, case, data, words):
    path = write(cli_file(home), data)
    message = refusal()
    assert str(path) in message, message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert "No RunComfy API token found" not in message  # the file is found; it is what is in it that is wrong
    assert HIDDEN not in message and "12345678901" not in message and "padding" not in message
    assert "Nothing was sent" in message


@pytest.mark.parametrize("case,data,words", DAMAGED, ids=[case for case, _, _ in DAMAGED])
def test_a_damaged_settings_token_file_is_named_and_saving_again_is_suggested(home, case, data, words):
    path = write(settings_file(home), data)
    message = refusal(settings_file=path)
    assert str(path) in message and "Settings > RunComfy > API token" in message, message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert HIDDEN not in message


def test_a_folder_where_the_token_file_should_be_is_named(home):
    cli_file(home).mkdir(parents=True)
    message = refusal()
    assert str(cli_file(home)) in message and "not a regular file" in message


def test_an_unreadable_token_file_is_named(home, monkeypatch):
    from runcomfy_seedream.api import config

    path = write(cli_file(home), json.dumps({"token": GOOD}).encode())

    def refuse(file, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(config, "read_regular_file", refuse)  # as for a file of another user (root reads any file)
    message = refusal()
    assert str(path) in message and "cannot be read (permission denied)" in message


@pytest.mark.parametrize("case,data,words", DAMAGED, ids=[case for case, _, _ in DAMAGED])
def test_a_valid_environment_variable_wins_over_damaged_files(home, monkeypatch, case, data, words):
    write(cli_file(home), data)
    settings = write(settings_file(home), data)
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", GOOD)
    found = resolve_credentials(settings_file=settings)
    assert found.token == GOOD and found.kind == "env"


def test_a_damaged_settings_file_is_not_passed_over_for_the_cli_file(home):
    """First found wins: the settings file exists, so it is the one meant; silently using the CLI's token
    instead could charge another account."""
    settings = write(settings_file(home), b"[]")
    write(cli_file(home), json.dumps({"token": GOOD}).encode())
    assert str(settings) in refusal(settings_file=settings)


def test_missing_files_are_no_token_found_and_a_good_file_is_used(home):
    assert find_credentials(settings_file=settings_file(home)) is None
    with pytest.raises(ConfigurationError) as caught:
        resolve_credentials(settings_file=settings_file(home))
    assert "No RunComfy API token found" in str(caught.value)
    write(cli_file(home), b"\xef\xbb\xbf" + json.dumps({"api_key": f" {GOOD} "}).encode())
    assert resolve_credentials(settings_file=settings_file(home)).token == GOOD
    write(cli_file(home), GOOD.encode() + b"\n")  # a bare token is still a token
    assert resolve_credentials().token == GOOD
    write(cli_file(home), json.dumps(GOOD).encode())
    assert resolve_credentials().token == GOOD
    write(cli_file(home), json.dumps({"token": "", "api_key": GOOD}).encode())  # the first key with a token in it
    assert resolve_credentials().token == GOOD
