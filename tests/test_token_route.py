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


def call(token_path, method: str, *, body=None, headers=None, raw: bytes | None = None):
    """One request to the route, served by a real aiohttp server on 127.0.0.1."""

    async def go():
        routes = web.RouteTableDef()
        register(routes, lambda: token_path)
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            sent_headers = {"Content-Type": "application/json"} if data is not None else {}
            sent_headers.update(headers or {})
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
