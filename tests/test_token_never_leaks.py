"""The API token reaches the configured API host in the Authorization header, and nowhere else."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from helpers import NODE_ID, load_copy, node_inputs, run_node
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
    assert (state / "records.db").exists() and any((state / "results").iterdir())
    assert SECRET not in everything_written(state)


def test_a_refused_token_is_not_echoed(fake, comfy, monkeypatch):
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", SECRET)  # not accepted by the fake
    with pytest.raises(RunComfyError) as caught:
        run_node(**node_inputs())
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


def test_only_api_calls_carry_the_token(fake, comfy, secret_token):
    run_node(**node_inputs())
    with_token = {r.path.split("?")[0].rsplit("/", 1)[-1] for r in fake.requests if SECRET in str(r.headers)}
    assert with_token == {"edit-sequential", "status", "result", "balance"}  # the balance: as RunComfy's CLI reads it
    assert all(r.path.startswith(("/v1/", "/prod/v2/")) for r in fake.requests if SECRET in str(r.headers))
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


PASSWORD = "pw-5e3a1c"  # in a result link's userinfo
SIGNATURE = "sig-9d27b4"  # in a result link's signed query


def signed_result_link(fake, run=run_node) -> str:
    """A result link with a user name and password and a signed query, served by the fake (its origin is the API
    base's, so it may be plain http): the file of a job that already finished."""
    run(**node_inputs(max_images=1, seed=1))
    (finished,) = fake.jobs
    return f"http://user:{PASSWORD}@127.0.0.1:{fake.port}/files/{finished}/0.png?X-Amz-Signature={SIGNATURE}&X-Amz-Expires=300"


def test_result_links_are_logged_without_their_password_or_signature(fake, comfy, caplog):
    caplog.set_level(logging.DEBUG)  # every library's logging, httpx and httpcore included
    link = signed_result_link(fake)
    fake.behaviour.result_urls = [link]
    caplog.clear()
    images, *_ = run_node(**node_inputs(max_images=1, seed=2))
    assert images.shape[0] == 1
    assert any(SIGNATURE in r.path for r in fake.requests_to("/files/"))  # fetched with its signature
    for record in caplog.records:
        logged = record.getMessage() + repr(record.args)
        assert PASSWORD not in logged and SIGNATURE not in logged, logged
    path = link.split("@", 1)[1].split("?")[0]
    downloads = [r.getMessage() for r in caplog.records if r.name == "httpx" and path in r.getMessage()]
    assert downloads and all(f"http://{path}?… " in line and "user" not in line for line in downloads), downloads
    api_calls = [r.getMessage() for r in caplog.records if r.name == "httpx" and "/result" in r.getMessage()]
    assert api_calls and all("include_cost" not in line for line in api_calls)  # our API calls' queries are hidden too


def test_other_requests_keep_their_query_but_never_a_password(fake, comfy, caplog):
    import httpx

    run_node(**node_inputs(max_images=1))  # the node keeps httpx's log as described
    caplog.set_level(logging.INFO, logger="httpx")
    line = 'HTTP Request: %s %s "%s %d %s"'
    httpx_log = logging.getLogger("httpx")
    httpx_log.info(line, "GET", httpx.URL("https://api.other.example/v2/items?page=2&sort=name"), "HTTP/1.1", 200, "OK")
    httpx_log.info(line, "GET", httpx.URL(f"https://me:{PASSWORD}@api.other.example/v2/items?page=3"), "HTTP/1.1", 200, "OK")
    httpx_log.info(line, "POST", f"https://me:{PASSWORD}@[2001:db8::1]:8443/x", "HTTP/1.1", 201, "Created")
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"][-3:]
    assert lines == [
        'HTTP Request: GET https://api.other.example/v2/items?page=2&sort=name "HTTP/1.1 200 OK"',
        'HTTP Request: GET https://api.other.example/v2/items?page=3 "HTTP/1.1 200 OK"',
        'HTTP Request: POST https://[2001:db8::1]:8443/x "HTTP/1.1 201 Created"',
    ]


def test_one_url_filter_serves_both_copies_of_the_pack(fake, comfy, monkeypatch, caplog):
    from test_two_copies import run_copy_node

    copies = ("runcomfy_seedream_from_manager", "runcomfy_seedream_from_git")
    httpx_log = logging.getLogger("httpx")
    monkeypatch.setattr(httpx_log, "filters", [])  # a fresh process; the copies' filters go with it
    caplog.set_level(logging.INFO, logger="httpx")
    first, second = (load_copy(name, monkeypatch) for name in copies)
    fake.behaviour.result_urls = [signed_result_link(fake, run=lambda **inputs: run_copy_node(first, **inputs))]
    caplog.clear()
    run_copy_node(second, **node_inputs(max_images=1, seed=2))  # the second copy's request, the first copy's filter

    guards = [known for known in httpx_log.filters if known.name == "runcomfy-hide-url-secrets"]
    assert len(guards) == 1 and sorted(guards[0].packages) == sorted(copies)
    lines = [record.getMessage() for record in caplog.records if record.name == "httpx"]
    assert any("/files/" in line and "?… " in line for line in lines), lines
    assert not any(PASSWORD in line or SIGNATURE in line for line in lines), lines
