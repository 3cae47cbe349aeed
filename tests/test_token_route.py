"""The settings route: checks a token with the service, stores it owner-only, never returns it, refuses other sites."""

from __future__ import annotations

import asyncio
import json
import stat

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from runcomfy_seedream.api.config import find_credentials  # noqa: E402
from runcomfy_seedream.nodes.token_route import ROUTE, register  # noqa: E402

GOOD = "rc_settings_token_0123456789"


@pytest.fixture
def token_path(tmp_path):
    return tmp_path / "user" / "runcomfy_seedream" / "secrets" / "api_token.json"


@pytest.fixture
def no_env_token(fake, monkeypatch):
    fake.valid_tokens.add(GOOD)
    monkeypatch.delenv("RUNCOMFY_API_TOKEN")


def call(token_path, method: str, *, body=None, headers=None, raw: bytes | None = None, chunks: list[bytes] | None = None):
    """One request to the route, served by a real aiohttp server on 127.0.0.1. "{port}" in a header value
    becomes the server's port; `chunks` are sent with Transfer-Encoding: chunked and no Content-Length."""

    async def go():
        routes = web.RouteTableDef()
        register(routes, lambda: token_path)
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            if chunks is not None:

                async def stream():
                    for chunk in chunks:
                        yield chunk

                data = stream()
            sent_headers = {"Content-Type": "application/json"} if data is not None else {}
            sent_headers.update({name: value.format(port=client.port) for name, value in (headers or {}).items()})
            response = await client.request(method, ROUTE, data=data, headers=sent_headers)
            return response.status, await response.text()

    return asyncio.run(go())


def test_a_good_token_is_checked_stored_owner_only_and_never_returned(fake, no_env_token, token_path):
    status, text = call(token_path, "POST", body={"token": GOOD})
    assert status == 200, text
    assert GOOD not in text
    assert json.loads(text) | {"message": ""} == {
        "ok": True,
        "message": "",
        "configured": True,
        "source": "settings",
        "detail": "ComfyUI settings (RunComfy > API token)",
    }
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600 and stat.S_IMODE(token_path.parent.stat().st_mode) == 0o700
    assert find_credentials(settings_file=token_path).token == GOOD
    checks = [r for r in fake.requests if r.headers.get("Authorization") == f"Bearer {GOOD}"]
    assert [r.method for r in checks] == ["GET"] and fake.submits == 0  # a read-only call, nothing charged

    status, text = call(token_path, "GET")
    assert json.loads(text)["configured"] is True and GOOD not in text


def test_a_refused_token_is_not_stored(fake, no_env_token, token_path):
    status, text = call(token_path, "POST", body={"token": "rc_wrong_token_123456"})
    assert status == 400 and "refused this token" in json.loads(text)["error"]
    assert not token_path.exists()


@pytest.mark.parametrize(
    "headers,body,raw,expected",
    [
        ({"Origin": "https://evil.example"}, {"token": GOOD}, None, 403),
        ({"Sec-Fetch-Site": "cross-site"}, {"token": GOOD}, None, 403),
        ({"Content-Type": "text/plain"}, None, b'{"token": "rc_settings_token_0123456789"}', 415),
        ({}, None, b'{"token": "' + b"x" * 5000 + b'"}', 413),
        ({}, {"token": "short"}, None, 400),
        ({}, {"token": "has spaces in it here"}, None, 400),
        ({}, None, b"not json", 400),
    ],
    ids=["other origin", "cross-site fetch", "not JSON", "too large", "too short", "spaces", "malformed"],
)
def test_requests_that_are_not_same_origin_json_are_refused(fake, no_env_token, token_path, headers, body, raw, expected):
    status, text = call(token_path, "POST", body=body, headers=headers, raw=raw)
    assert status == expected, text
    assert not token_path.exists()
    assert not [r for r in fake.requests if GOOD in str(r.headers)]


def test_delete_forgets_the_saved_token_and_env_still_wins(fake, no_env_token, token_path, monkeypatch):
    call(token_path, "POST", body={"token": GOOD})
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", fake.behaviour.token)
    status, text = call(token_path, "GET")
    assert json.loads(text)["source"] == "env"
    status, text = call(token_path, "DELETE")
    assert json.loads(text)["removed"] is True and not token_path.exists()
    assert json.loads(text)["source"] == "env"


def test_the_node_uses_the_token_saved_in_settings(fake, comfy, no_env_token, token_path, monkeypatch):
    from helpers import node_inputs, run_node
    from runcomfy_seedream.nodes import comfy_bridge

    call(token_path, "POST", body={"token": GOOD})
    monkeypatch.setattr(comfy_bridge, "token_file", lambda: token_path)
    run_node(**node_inputs())
    submits = [r for r in fake.requests if r.method == "POST" and r.path.startswith("/v1/models/")]
    assert [r.headers["Authorization"] for r in submits] == [f"Bearer {GOOD}"]


def test_a_malformed_token_is_reported_by_where_it_is_never_what_it_is(fake, token_path, monkeypatch):
    bad = "rc_live_broken\r\nX-Injected: yes"
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", bad)
    status, text = call(token_path, "GET")
    data = json.loads(text)
    assert status == 200 and data["configured"] is False
    assert "RUNCOMFY_API_TOKEN" in data["detail"] and "line break" in data["detail"]
    assert "rc_live_broken" not in text and "Injected" not in text


REBINDING = {"Host": "evil.example:{port}", "Origin": "http://evil.example:{port}"}  # a name the attacker points at 127.0.0.1


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_a_dns_rebinding_page_can_neither_read_plant_nor_delete_the_token(fake, no_env_token, token_path, method):
    token_path.parent.mkdir(parents=True)
    token_path.write_text(json.dumps({"token": "rc_earlier_token_0123456789"}))
    before = token_path.read_bytes()
    status, text = call(token_path, method, body={"token": GOOD} if method == "POST" else None, headers=REBINDING)
    assert status == 403, text
    error = json.loads(text)["error"]
    assert "evil.example" in error and "RUNCOMFY_SEEDREAM_ALLOWED_HOSTS" in error  # what was refused, and how to allow it
    assert token_path.read_bytes() == before  # neither replaced nor deleted
    assert "configured" not in text and "api_token.json" not in text  # nothing about the token either
    assert not [r for r in fake.requests if GOOD in str(r.headers)]  # not even checked with the service


@pytest.mark.parametrize(
    "host,allowed",
    [
        ("localhost:{port}", ""),
        ("127.0.0.1:{port}", ""),
        ("127.1.2.3:{port}", ""),
        ("[::1]:{port}", ""),
        ("comfy.localhost:{port}", ""),
        ("192.168.1.20:8188", ""),  # a LAN address, as with --listen 0.0.0.0
        ("[fe80::1]:8188", ""),
        ("localhost", ""),
        ("comfy.lan:{port}", "comfy.lan"),
        ("Comfy.LAN:8188", " other.example , comfy.lan "),
    ],
    ids=["localhost", "127.0.0.1", "127.1.2.3", "::1", "*.localhost", "LAN IP", "IPv6 literal", "no port", "configured", "configured list"],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_loopback_ip_literals_and_configured_names_are_served(fake, no_env_token, token_path, monkeypatch, method, host, allowed):
    monkeypatch.setenv("RUNCOMFY_SEEDREAM_ALLOWED_HOSTS", allowed)
    scheme_host = host.lower()
    status, text = call(
        token_path,
        method,
        body={"token": GOOD} if method == "POST" else None,
        headers={"Host": host, "Origin": f"http://{scheme_host}"},
    )
    assert status == 200, text
    assert token_path.exists() == (method == "POST")


def test_a_name_is_served_only_once_it_is_configured(fake, no_env_token, token_path, monkeypatch):
    headers = {"Host": "comfy.lan:{port}", "Origin": "http://comfy.lan:{port}"}
    monkeypatch.setenv("RUNCOMFY_SEEDREAM_ALLOWED_HOSTS", "other.lan,comfy.lan.example")
    assert call(token_path, "POST", body={"token": GOOD}, headers=headers)[0] == 403
    assert not token_path.exists()
    monkeypatch.setenv("RUNCOMFY_SEEDREAM_ALLOWED_HOSTS", "comfy.lan")
    assert call(token_path, "POST", body={"token": GOOD}, headers=headers)[0] == 200
    assert token_path.exists()


@pytest.mark.parametrize(
    "raw",
    [b"[" * 4000, b"[" * 2000 + b"]" * 2000, b'{"token": ' + b"[" * 3990 + b"}", b'{"token": ' + b"[" * 2000 + b"]" * 2000 + b"}"],
    ids=["open lists", "closed lists", "token of open lists", "token of closed lists"],
)
def test_a_deeply_nested_body_is_refused_as_not_a_token_without_a_traceback(fake, no_env_token, token_path, caplog, raw):
    assert len(raw) <= 4096
    status, text = call(token_path, "POST", raw=raw)
    assert status == 400, text
    assert "does not look like a RunComfy API token" in json.loads(text)["error"]
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage() or "RecursionError" in r.getMessage()]
    assert not token_path.exists()


def test_a_small_chunked_body_is_accepted(fake, no_env_token, token_path):
    body = json.dumps({"token": GOOD}).encode()
    status, text = call(token_path, "POST", chunks=[body[:7], body[7:20], body[20:]])
    assert status == 200, text
    assert find_credentials(settings_file=token_path).token == GOOD


@pytest.mark.parametrize(
    "chunks",
    [
        [b'{"token": "' + b"x" * 3000, b"x" * 3000 + b'"}'],
        [json.dumps({"token": GOOD}).encode(), b" " * 5000],  # a good token first, then more than the cap
    ],
    ids=["too large in two chunks", "a good start, too large in all"],
)
def test_a_chunked_body_over_the_cap_is_refused(fake, no_env_token, token_path, chunks):
    status, text = call(token_path, "POST", chunks=chunks)
    assert status == 413, text
    assert not token_path.exists()


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8188", "localhost.evil.example", "127.0.0.1.evil.example", "evillocalhost", "", "[evil"],
)
def test_names_an_attacker_can_point_at_this_machine_are_not_reachable_hosts(host):
    from runcomfy_seedream.nodes.token_route import reachable_host

    assert not reachable_host(host, {})
    assert reachable_host(None, {})  # no Host header: no browser sent it


def test_a_damaged_token_file_is_reported_by_where_and_saving_again_repairs_it(fake, no_env_token, token_path):
    token_path.parent.mkdir(parents=True)
    token_path.write_text('["rc_listed_token_0123456789"]')
    status, text = call(token_path, "GET")
    data = json.loads(text)
    assert status == 200 and data["configured"] is False
    assert str(token_path) in data["detail"] and "JSON list" in data["detail"] and "rc_listed" not in text
    assert call(token_path, "POST", body={"token": GOOD})[0] == 200
    assert json.loads(call(token_path, "GET")[1])["source"] == "settings"
