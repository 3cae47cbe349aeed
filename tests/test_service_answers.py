"""What the user sees when the service refuses, fails, throttles or misbehaves; never a second paid submit."""

from __future__ import annotations

import time

import pytest

from helpers import node_inputs, quick_timing, run_node
from runcomfy_seedream.api.errors import (
    AuthenticationError,
    InsufficientBalanceError,
    JobFailedError,
    OutcomeUnknownError,
    ServiceError,
)
from runcomfy_seedream.fake_service import Fault


def test_wrong_token_is_explained(fake, comfy, monkeypatch):
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "not-the-right-token")
    with pytest.raises(AuthenticationError) as caught:
        run_node(**node_inputs())
    assert "invalid, expired or revoked" in str(caught.value)
    assert "not-the-right-token" not in str(caught.value)
    assert fake.submits == 0


def test_out_of_credit_is_explained(fake, comfy):
    fake.behaviour.balance_usd = 0.01
    fake.behaviour.serves_balance = False  # the balance cannot be read first: RunComfy's 402 says it
    with pytest.raises(InsufficientBalanceError) as caught:
        run_node(**node_inputs())
    assert str(caught.value).startswith("Submitting the job failed: Your RunComfy balance has run out")
    assert "HTTP 402" not in str(caught.value) and "may have been charged" not in str(caught.value)
    assert fake.submits == 0 and fake.submit_attempts == 1


def test_a_failed_generation_shows_the_service_reason(fake, comfy):
    fake.behaviour.fail_with = "content policy violation"
    with pytest.raises(JobFailedError) as caught:
        run_node(**node_inputs())
    assert "content policy violation" in str(caught.value)
    assert next(iter(fake.jobs)) in str(caught.value)  # the request id, for support


def test_polls_survive_429_5xx_resets_and_garbage_with_one_submit(fake, comfy):
    fake.behaviour.inject(
        "status",
        Fault("http", status=429, retry_after="1"),
        Fault("http", status=503),
        Fault("drop"),
        Fault("garbage"),
    )
    fake.behaviour.inject("result", Fault("http", status=500))
    fake.behaviour.inject("file", Fault("http", status=502), Fault("drop"))
    started = time.monotonic()
    from runcomfy_seedream.api import RetryPolicy

    images, *_ = run_node(timing=quick_timing(job_retry=RetryPolicy.until_deadline(base_delay_s=0.01, max_delay_s=5.0)), **node_inputs())
    assert images.shape[0] == 3
    assert fake.submits == 1 and fake.submit_attempts == 1
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert any(t.startswith("RunComfy busy (HTTP 429); retrying in 1 s; the job is still running") for t in comfy.progress_texts())


def test_a_rate_limited_submit_is_retried_because_it_was_refused(fake, comfy):
    fake.behaviour.inject("submit", Fault("http", status=429, retry_after="0"))
    images, *_ = run_node(**node_inputs())
    assert images.shape[0] == 3
    assert fake.submit_attempts == 2 and fake.submits == 1


@pytest.mark.parametrize("fault", [Fault("drop"), Fault("garbage")], ids=["connection dropped", "unreadable answer"])
def test_a_submit_whose_answer_is_lost_is_never_sent_again(fake, comfy, fault):
    fake.behaviour.inject("submit", fault)
    with pytest.raises(OutcomeUnknownError) as caught:
        run_node(**node_inputs())
    assert "may have been charged" in str(caught.value) or "may be running" in str(caught.value)
    assert fake.submit_attempts == 1 and fake.submits == 1


def test_a_submit_that_times_out_is_reported_as_unknown_not_failed(fake, comfy):
    from runcomfy_seedream.api.client import Timeouts

    fake.behaviour.inject("submit", Fault("stall", seconds=2.0))
    with pytest.raises(OutcomeUnknownError) as caught:
        run_node(timing=quick_timing(timeouts=Timeouts(submit_read_s=0.5)), **node_inputs())
    assert "not sent again" in str(caught.value)
    assert fake.submit_attempts == 1


def test_service_unreachable_is_retried_then_reported_without_charge(comfy, monkeypatch, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "token-for-nobody")
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", f"http://127.0.0.1:{port}/v1")
    from runcomfy_seedream.api import RetryPolicy
    from runcomfy_seedream.api.errors import ServiceError

    with pytest.raises(ServiceError) as caught:
        run_node(timing=quick_timing(submit_retry=RetryPolicy(max_attempts=3, base_delay_s=0.01)), **node_inputs())
    assert "3 tries" in str(caught.value) and "nothing was charged" in str(caught.value)
    assert not isinstance(caught.value, OutcomeUnknownError)


def test_the_submit_has_a_content_length_and_is_never_chunked(fake, comfy):
    fake.behaviour.refuse_chunked = True  # a proxy that wants the length up front
    images, *_ = run_node(**node_inputs())
    assert images.shape[0] == 3
    assert fake.submit_attempts == 1 and fake.submits == 1
    (submit,) = [r for r in fake.requests_to("/v1/models/") if r.method == "POST"]
    assert int(submit.headers["Content-Length"]) == next(iter(fake.jobs.values())).body_bytes
    assert "Transfer-Encoding" not in submit.headers


def test_a_login_page_answering_the_submit_holds_nothing(fake, comfy):
    fake.behaviour.inject("submit", Fault("http", status=200, body=b"<html><title>Sign in</title></html>", content_type="text/html"))
    with pytest.raises(ServiceError) as caught:
        run_node(**node_inputs())
    assert not isinstance(caught.value, OutcomeUnknownError) and "nothing was charged" in str(caught.value)
    assert fake.submits == 0
    images, *_ = run_node(**node_inputs())  # the same inputs again at once: nothing was held
    assert images.shape[0] == 3 and fake.submits == 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "application/json"])
def test_a_portal_page_sent_under_another_content_type_to_the_submit_holds_nothing(fake, comfy, content_type):
    """A login page is plainly not the API whatever its label: "may be charged" and the hour's hold would be false."""
    page = b"<!DOCTYPE html><html><body>Sign in to the Wi-Fi</body></html>"
    fake.behaviour.inject("submit", Fault("http", status=200, body=page, content_type=content_type))
    with pytest.raises(ServiceError) as caught:
        run_node(**node_inputs())
    assert not isinstance(caught.value, OutcomeUnknownError)
    assert "not the RunComfy API" in str(caught.value) and "nothing was charged" in str(caught.value)
    run_node(**node_inputs())  # nothing held: the same inputs go through at once
    assert fake.submits == 1


@pytest.mark.parametrize(
    "page",
    [
        b"<!-- captive portal -->\n<!DOCTYPE html><html><body>Sign in to the Wi-Fi</body></html>",
        b'<?xml version="1.0"?><!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"><html></html>',
        b"<head><meta http-equiv='refresh' content='0;url=https://portal.example/'></head>",
    ],
    ids=["a comment first", "an xml prolog first", "no html tag"],
)
def test_a_portal_page_that_opens_with_a_comment_or_prolog_answering_the_submit_holds_nothing(fake, comfy, page):
    """Sent as text/plain: it was read as an unreadable answer of RunComfy's ("may be charged", an hour's hold)."""
    fake.behaviour.inject("submit", Fault("http", status=200, body=page, content_type="text/plain"))
    with pytest.raises(ServiceError) as caught:
        run_node(**node_inputs())
    assert not isinstance(caught.value, OutcomeUnknownError)
    assert "not the RunComfy API" in str(caught.value) and "nothing was charged" in str(caught.value)
    run_node(**node_inputs())
    assert fake.submits == 1
