"""The API token reaches the configured API host in the Authorization header, and nowhere else."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from helpers import NODE_ID, node_inputs, run_node
from runcomfy_seedream.api.errors import RunComfyError
from runcomfy_seedream.fake_service import Fault
from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS

SECRET = "rc_live_SECRET_3f9a7c1e5b"


@pytest.fixture
def secret_token(fake, monkeypatch):
    fake.valid_tokens.add(SECRET)
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", SECRET)
    return SECRET


def everything_written(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())


def test_no_input_can_carry_a_token_into_a_saved_workflow():
    spec = NODE_CLASS_MAPPINGS[NODE_ID].INPUT_TYPES()
    names = [name for section in spec.values() for name in section]
    assert not [n for n in names if any(word in n.lower() for word in ("token", "key", "auth", "secret"))]
    assert spec["hidden"] == {"unique_id": "UNIQUE_ID"}  # no AUTH_TOKEN_COMFY_ORG / API_KEY_COMFY_ORG either


def test_a_full_run_and_its_failures_never_show_the_token(fake, comfy, secret_token, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)  # every library's debug logging, httpx and httpcore included
    run_node(**node_inputs())  # a good run, journaled and cached
    errors: list[str] = []
    scenarios = [
        lambda: fake.behaviour.inject("submit", Fault("http", status=500)),
        lambda: setattr(fake.behaviour, "fail_with", "boom"),
        lambda: fake.behaviour.inject("submit", Fault("drop")),
    ]
    for seed, arrange in enumerate(scenarios, start=100):
        arrange()
        with pytest.raises(RunComfyError) as caught:
            run_node(**node_inputs(seed=seed))
        errors.append(repr(caught.value) + str(caught.value))
        fake.behaviour.fail_with = None

    assert caplog.text and SECRET not in caplog.text
    assert not any(SECRET in e for e in errors)
    assert not any(SECRET in text for text in comfy.progress_texts())
    state = tmp_path / ".cache" / "runcomfy-seedream"
    assert (state / "journal.json").exists() and any((state / "results").iterdir())
    assert SECRET not in everything_written(state)


def test_a_refused_token_is_not_echoed(fake, comfy, monkeypatch):
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", SECRET)  # not accepted by the fake
    with pytest.raises(RunComfyError) as caught:
        run_node(**node_inputs())
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


def test_only_api_calls_carry_the_token(fake, comfy, secret_token):
    run_node(**node_inputs())
    with_token = {r.path.split("?")[0].rsplit("/", 1)[-1] for r in fake.requests if SECRET in str(r.headers)}
    assert with_token == {"edit-sequential", "status", "result"}
    assert all(r.path.startswith("/v1/") for r in fake.requests if SECRET in str(r.headers))
    assert all("Authorization" not in r.headers for r in fake.requests_to("/files/"))


def test_the_cache_key_does_not_depend_on_the_token(fake, comfy, secret_token, monkeypatch, tmp_path):
    run_node(**node_inputs())
    (key,) = [p.name for p in (tmp_path / ".cache" / "runcomfy-seedream" / "results").iterdir()]
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", fake.behaviour.token)  # another valid token
    requests_before = len(fake.requests)
    run_node(**node_inputs())
    assert len(fake.requests) == requests_before  # same key: served from the cache
    assert SECRET not in key


def test_credentials_repr_hides_the_token():
    from runcomfy_seedream.api.config import Credentials

    assert SECRET not in repr(Credentials(SECRET, "environment variable RUNCOMFY_API_TOKEN"))


def test_status_polls_do_not_flood_the_console_but_other_requests_are_logged(fake, comfy, caplog):
    caplog.set_level(logging.INFO, logger="httpx")
    fake.behaviour.run_s = 2.0
    run_node(**node_inputs())
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("/edit-sequential" in line for line in lines) and any("/result" in line for line in lines)
    assert not any(line.split('"')[0].rstrip().endswith("/status") for line in lines)
    assert len([r for r in fake.requests if r.path.endswith("/status")]) >= 3  # it did poll
