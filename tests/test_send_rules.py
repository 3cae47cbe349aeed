"""The send rules as tables: what each outcome of one attempt comes to, for a read, for the paid submit, and for a
result download. Pure functions of plain data: no server, no network, no waiting.

A row is (name, call, attempt, expected, words). `expected` is the JSON object a call returns, `retry(...)` for a
retry (with the Retry-After it must honour), or the exception type it raises; `words` must appear in the message.
"""

from __future__ import annotations

import asyncio
import io
import math
from dataclasses import dataclass

import pytest
from PIL import Image

from runcomfy_seedream.api.client import (
    ACCEPT_ENCODING,
    MAX_ANSWER_BYTES,
    Attempt,
    Call,
    Done,
    Fail,
    Retry,
    RetryPolicy,
    Transport,
    classify,
    cost_or_none,
    opens_as_html_page,
    queue_position_or_none,
    refused_codings,
    retry_notice,
    with_retries,
)
from runcomfy_seedream.api.downloads import GONE_TRIES, Fetched, _a_page, classify_download
from runcomfy_seedream.api.errors import (
    AuthenticationError,
    DownloadError,
    InsufficientBalanceError,
    OutcomeUnknownError,
    RequestNotFoundError,
    ServiceError,
)

TOKEN = "secret-token-123"
SUBMIT = Call("Submitting the job", idempotent=False, redact=TOKEN)
STATUS = Call("Checking the job status", request_id="req-1", redact=TOKEN)
RESULT = Call("Fetching the job result", request_id="req-1", redact=TOKEN)
CANCEL = Call("Cancelling the job", request_id="req-1", redact=TOKEN)
CATALOG = Call("Reading the model catalog", redact=TOKEN)

JOB = {"request_id": "req-1", "status": "in_queue"}
PAST_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


def answer(status: int, body=None, *, code: str | None = None, body_complete: bool = True, unreadable: str = "", **headers: str) -> Attempt:
    """An HTTP answer as `_send_once` records it; `code`: RunComfy's error_code in the body; `unreadable`: why its body
    was not read; header names with `_`."""
    if code is not None:
        body = {"error_code": code, "error_message": "as RunComfy says it"}
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return Attempt.answered(status, named, body, body_complete=body_complete, unreadable=unreadable)


OVER_CAP = "over the 4 MiB limit once decoded"  # as `_send_once` records an answer past MAX_ANSWER_BYTES
STACKED = "in content codings that were not asked for (gzip, gzip)"
NEVER_CONNECTED = Attempt.failed(Transport.NOT_CONNECTED, "connection problem (ConnectError)", body_complete=False)
CONNECT_TIMEOUT = Attempt.failed(Transport.NOT_CONNECTED, "no answer in time (ConnectTimeout)", body_complete=False)
NO_FREE_CONNECTION = Attempt.failed(Transport.NOT_CONNECTED, "no answer in time (PoolTimeout)", body_complete=False)
BROKEN_AFTER_BODY = Attempt.failed(Transport.BROKEN, "connection problem (RemoteProtocolError)", body_complete=True)
TIMED_OUT_AFTER_BODY = Attempt.failed(Transport.BROKEN, "no answer in time (ReadTimeout)", body_complete=True)
UNDECODABLE_AFTER_BODY = Attempt.failed(Transport.BROKEN, "an answer that could not be decoded (DecodingError)", body_complete=True)
BROKEN_MID_UPLOAD = Attempt.failed(Transport.BROKEN, "connection problem (WriteError)", body_complete=False)
TIMED_OUT_MID_UPLOAD = Attempt.failed(Transport.BROKEN, "no answer in time (WriteTimeout)", body_complete=False)
BROKEN_ON_A_READ = Attempt.failed(Transport.BROKEN, "connection problem (ReadError)")


@dataclass(frozen=True)
class retry:  # noqa: N801 - reads as a verdict in the tables
    retry_after: float | None = None
    condition: str | None = None
    problem: str | None = None


ROWS = [
    # Answers that are the data.
    ("200 JSON on status", STATUS, answer(200, {"status": "in_progress"}), {"status": "in_progress"}, ()),
    ("200 JSON on the catalog", CATALOG, answer(200, {"base_price_usd": 0.03}), {"base_price_usd": 0.03}, ()),
    ("200 JSON on the submit", SUBMIT, answer(200, JOB), JOB, ()),
    ("201 JSON on the submit", SUBMIT, answer(201, JOB), JOB, ()),
    # Answers that cannot be read: a read asks again, a submit was accepted and may be running.
    ("200 unreadable on status", STATUS, answer(200, None), retry(condition="not answering properly", problem="an unreadable answer"), ()),
    (
        "200 JSON array on result",
        RESULT,
        answer(200, [1, 2]),
        retry(problem="an answer that is not the API (JSON that is not an object)"),
        (),
    ),
    ("200 unreadable on the submit", SUBMIT, answer(200, None), OutcomeUnknownError, ["accepted it", "may be running"]),
    ("200 claiming JSON, truncated, on the submit", SUBMIT, answer(200, None, Content_Type="application/json"), OutcomeUnknownError, []),
    ("200 text/plain, not JSON, on the submit", SUBMIT, answer(200, None, Content_Type="text/plain"), OutcomeUnknownError, []),
    (
        "200 text/html on status",
        STATUS,
        answer(200, None, Content_Type="text/html"),
        retry(None, "not answering properly", "an answer that is not the API (text/html)"),
        (),
    ),
    ("200 JSON number on the catalog", CATALOG, answer(200, 3), retry(condition="not answering properly"), ()),
    # Answers past the size cap (or in codings not asked for) are not read: unreadable, whatever they hold.
    (
        "200 over the answer cap on status",
        STATUS,
        answer(200, unreadable=OVER_CAP),
        retry(None, "not answering properly", f"an answer {OVER_CAP}"),
        (),
    ),
    ("200 over the answer cap on the catalog", CATALOG, answer(200, unreadable=OVER_CAP), retry(problem=f"an answer {OVER_CAP}"), ()),
    ("200 over the answer cap on cancel", CANCEL, answer(200, unreadable=OVER_CAP), retry(), ()),
    ("200 gzip, gzip on result", RESULT, answer(200, unreadable=STACKED), retry(problem=f"an answer {STACKED}"), ()),
    (
        "200 over the answer cap on the submit",
        SUBMIT,
        answer(200, unreadable=OVER_CAP, Content_Type="application/json"),
        OutcomeUnknownError,
        ["answer was over the 4 MiB limit once decoded", "may have been charged", "not sent again"],
    ),
    ("200 gzip, gzip on the submit", SUBMIT, answer(200, unreadable=STACKED), OutcomeUnknownError, ["(gzip, gzip)", "may have been"]),
    (
        "200 HTML over the answer cap on the submit",
        SUBMIT,
        answer(200, unreadable=OVER_CAP, Content_Type="text/html"),
        ServiceError,
        ["text/html"],
    ),
    ("502 over the answer cap on the submit", SUBMIT, answer(502, unreadable=OVER_CAP), OutcomeUnknownError, ["HTTP 502"]),
    ("500 over the answer cap on status", STATUS, answer(500, unreadable=OVER_CAP), retry(None, "unavailable", "HTTP 500"), ()),
    ("401 over the answer cap on the submit", SUBMIT, answer(401, unreadable=OVER_CAP), AuthenticationError, ["RUNCOMFY_API_TOKEN"]),
    ("429 over the answer cap on the submit", SUBMIT, answer(429, unreadable=OVER_CAP), retry(None, "busy"), ()),
    # Answers that are plainly not the API (a login page, a captive portal): a page in front of it answered; no job.
    (
        "200 text/html on the submit",
        SUBMIT,
        answer(200, None, Content_Type="text/html; charset=utf-8"),
        ServiceError,
        ["not the RunComfy API (HTTP 200, text/html)", "No job was created and nothing was charged", "RUNCOMFY_MODEL_API_BASE"],
    ),
    (
        "200 application/xhtml+xml on the submit",
        SUBMIT,
        answer(200, None, Content_Type="application/xhtml+xml"),
        ServiceError,
        ["application/xhtml+xml"],
    ),
    (
        "200 JSON array on the submit",
        SUBMIT,
        answer(200, []),
        ServiceError,
        ["not the RunComfy API (HTTP 200, JSON that is not an object)"],
    ),
    ("200 JSON string on the submit", SUBMIT, answer(200, "ok"), ServiceError, ["not the RunComfy API", "nothing was charged"]),
    ("200 JSON number on the submit", SUBMIT, answer(200, 5), ServiceError, ["not the RunComfy API"]),
    ("202 text/html on the submit", SUBMIT, answer(202, None, Content_Type="TEXT/HTML"), ServiceError, ["HTTP 202"]),
    ("200 text/html holding the job on the submit (mislabelled)", SUBMIT, answer(200, JOB, Content_Type="text/html"), JOB, ()),
    # 429: always refused, so always retried; Retry-After is the least wait, 0 included.
    ("429 with Retry-After: 20 on status", STATUS, answer(429, Retry_After="20"), retry(20.0, "busy", "HTTP 429"), ()),
    ("429 with Retry-After: 0 on status", STATUS, answer(429, Retry_After="0"), retry(0.0, "busy"), ()),
    ("429 without Retry-After on result", RESULT, answer(429), retry(None, "busy"), ()),
    ("429 with a past HTTP date", STATUS, answer(429, Retry_After=PAST_DATE), retry(0.0), ()),
    ("429 with an unreadable Retry-After", STATUS, answer(429, Retry_After="soon"), retry(None), ()),
    ("429 with lower-case retry-after", CATALOG, answer(429, retry_after="7"), retry(7.0), ()),
    ("429 on the submit with Retry-After: 0", SUBMIT, answer(429, Retry_After="0"), retry(0.0, "busy", "HTTP 429 (rate limited)"), ()),
    ("429 on the submit without Retry-After", SUBMIT, answer(429), retry(None, "busy", "HTTP 429 (rate limited)"), ()),
    # 5xx: a read waits it out; the submit says what it means.
    ("500 bare on status", STATUS, answer(500), retry(None, "unavailable", "HTTP 500"), ()),
    ("500 with 500001 on result", RESULT, answer(500, code="500001"), retry(None, "unavailable"), ()),
    ("503 with Retry-After on status (only a 429's is honoured)", STATUS, answer(503, Retry_After="9"), retry(None), ()),
    ("502 bare on status", STATUS, answer(502), retry(), ()),
    ("504 bare on the catalog", CATALOG, answer(504), retry(), ()),
    ("500 on cancel", CANCEL, answer(500), retry(), ()),
    (
        "500 with 500001 on the submit",
        SUBMIT,
        answer(500, code="500001"),
        OutcomeUnknownError,
        ["server error", "500001", "not sent again"],
    ),
    (
        "500 with 500001 on the submit before the body was all sent",
        SUBMIT,
        answer(500, code="500001", body_complete=False),
        ServiceError,
        ["500001"],
    ),
    ("503 with RunComfy's 400004 on the submit", SUBMIT, answer(503, code="400004"), AuthenticationError, ["400004"]),
    ("500 with RunComfy's 400002 on the submit", SUBMIT, answer(500, code="400002"), InsufficientBalanceError, ["400002"]),
    # Any other 5xx to a submit whose body arrived is not RunComfy's word: the job may exist.
    ("500 bare on the submit after the body", SUBMIT, answer(500), OutcomeUnknownError, ["HTTP 500", "may have been charged"]),
    (
        "500 {detail} on the submit after the body",
        SUBMIT,
        answer(500, {"detail": "internal error"}),
        OutcomeUnknownError,
        ["HTTP 500", "not RunComfy's", "not sent again"],
    ),
    ("500 with an undocumented code on the submit", SUBMIT, answer(500, code="500"), OutcomeUnknownError, ["HTTP 500"]),
    ("502 with a proxy's own code on the submit", SUBMIT, answer(502, code="UPSTREAM_RESET"), OutcomeUnknownError, ["HTTP 502"]),
    ("501 bare on the submit after the body", SUBMIT, answer(501), OutcomeUnknownError, ["HTTP 501"]),
    ("507 HTML on the submit after the body", SUBMIT, answer(507, Content_Type="text/html"), OutcomeUnknownError, ["HTTP 507"]),
    (
        "500 {detail} on the submit before the body was all sent",
        SUBMIT,
        answer(500, {"detail": "internal error"}, body_complete=False),
        ServiceError,
        ["server error", "internal error"],
    ),
    ("500 {detail} on status", STATUS, answer(500, {"detail": "internal error"}), retry(None, "unavailable", "HTTP 500"), ()),
    ("502 bare on the submit after the body", SUBMIT, answer(502), OutcomeUnknownError, ["gateway", "HTTP 502", "not sent again"]),
    ("503 bare on the submit after the body", SUBMIT, answer(503), OutcomeUnknownError, ["HTTP 503", "may have been charged"]),
    ("504 bare on the submit after the body", SUBMIT, answer(504), OutcomeUnknownError, ["HTTP 504", "may have been charged"]),
    (
        "503 with RunComfy's 500001 on the submit",
        SUBMIT,
        answer(503, code="500001"),
        OutcomeUnknownError,
        ["500001", "may have been charged"],
    ),
    ("502 with RunComfy's 500001 on the submit", SUBMIT, answer(502, code="500001"), OutcomeUnknownError, ["server error"]),
    ("502 bare on the submit before the body was all sent", SUBMIT, answer(502, body_complete=False), ServiceError, ["server error"]),
    # 404: RunComfy's 404001 is its word that the request is gone; a bare 404 is a proxy or an edge in trouble.
    ("404 bare on status", STATUS, answer(404), retry(None, "unavailable", "HTTP 404"), ()),
    ("404 with 404001 on status", STATUS, answer(404, code="404001"), RequestNotFoundError, ["no longer knows this request"]),
    ("404 with 404001 on result", RESULT, answer(404, code="404001"), RequestNotFoundError, ["404001"]),
    ("404 with another code on status", STATUS, answer(404, code="404"), retry(), ()),
    ("404 bare on the submit", SUBMIT, answer(404), ServiceError, ["404"]),
    # 408 and 425 are worth another read; never another submit.
    ("408 on status", STATUS, answer(408), retry(None, "unavailable", "HTTP 408"), ()),
    ("425 on result", RESULT, answer(425), retry(None, "unavailable", "HTTP 425"), ()),
    ("408 on the submit", SUBMIT, answer(408), ServiceError, ["HTTP 408"]),
    # The token and the account.
    ("401 on status", STATUS, answer(401), AuthenticationError, ["invalid, expired or revoked"]),
    ("403 on the catalog", CATALOG, answer(403), AuthenticationError, ["invalid, expired or revoked"]),
    ("403 with 403001 on result", RESULT, answer(403, code="403001"), AuthenticationError, ["another RunComfy account"]),
    ("401 on the submit", SUBMIT, answer(401), AuthenticationError, ["RUNCOMFY_API_TOKEN"]),
    ("400 with 400004 on the submit", SUBMIT, answer(400, code="400004"), AuthenticationError, ["400004"]),
    ("400 with 400002 on the submit", SUBMIT, answer(400, code="400002"), InsufficientBalanceError, ["balance is too low"]),
    # Refusals before or while the body was read: no job.
    ("413 before the upload was read", SUBMIT, answer(413, body_complete=False), ServiceError, ["HTTP 413"]),
    ("411 after draining the upload", SUBMIT, answer(411), ServiceError, ["HTTP 411"]),
    ("422 on the submit", SUBMIT, answer(422, {"error_message": "prompt is too long"}), ServiceError, ["prompt is too long"]),
    ("422 on status", STATUS, answer(422), ServiceError, ["HTTP 422"]),
    # Redirects: never followed; on the submit they are something that is not the API.
    (
        "302 with a Location on the submit",
        SUBMIT,
        answer(302, Location="https://login.example.com/sso"),
        ServiceError,
        ["to https://login.example.com/sso", "nothing was charged"],
    ),
    (
        "302 to a Location holding the token",
        SUBMIT,
        answer(302, Location=f"https://login.example.com/?t={TOKEN}"),
        ServiceError,
        ["<token>"],
    ),
    (
        "200 in codings that echo the token, on the submit",
        SUBMIT,
        answer(200, unreadable=f"in content codings that were not asked for ({TOKEN})"),
        OutcomeUnknownError,
        ["<token>"],
    ),
    ("301 without a Location on the submit", SUBMIT, answer(301), ServiceError, ["redirect (HTTP 301)", "RUNCOMFY_MODEL_API_BASE"]),
    ("307 on the submit, even with JSON", SUBMIT, answer(307, JOB), ServiceError, ["redirect (HTTP 307"]),
    ("302 on status, no JSON", STATUS, answer(302, Location="https://login.example.com/"), retry(problem="an unreadable answer"), ()),
    ("304 on status with JSON", STATUS, answer(304, {"status": "completed"}), {"status": "completed"}, ()),
    # Transport failures: whether anything can have arrived decides.
    ("connection refused on status", STATUS, NEVER_CONNECTED, retry(None, "unreachable", "connection problem (ConnectError)"), ()),
    ("connection refused on the submit", SUBMIT, NEVER_CONNECTED, retry(None, "unreachable"), ()),
    ("connect timeout on the submit", SUBMIT, CONNECT_TIMEOUT, retry(None, "unreachable"), ()),
    ("no free pooled connection on the submit", SUBMIT, NO_FREE_CONNECTION, retry(), ()),
    ("connection broken on status", STATUS, BROKEN_ON_A_READ, retry(None, "unreachable", "connection problem (ReadError)"), ()),
    ("read timeout on result", RESULT, TIMED_OUT_AFTER_BODY, retry(problem="no answer in time (ReadTimeout)"), ()),
    ("undecodable answer on status", STATUS, UNDECODABLE_AFTER_BODY, retry(), ()),
    ("connection broken on the catalog", CATALOG, BROKEN_ON_A_READ, retry(), ()),
    (
        "connection broken after the whole submit body",
        SUBMIT,
        BROKEN_AFTER_BODY,
        OutcomeUnknownError,
        ["connection failed before RunComfy answered", "may have been charged"],
    ),
    (
        "read timeout after the whole submit body",
        SUBMIT,
        TIMED_OUT_AFTER_BODY,
        OutcomeUnknownError,
        ["no answer in time", "not sent again"],
    ),
    ("undecodable submit answer", SUBMIT, UNDECODABLE_AFTER_BODY, OutcomeUnknownError, ["could not be decoded"]),
    ("connection broken mid-upload", SUBMIT, BROKEN_MID_UPLOAD, ServiceError, ["upload broke off", "nothing was charged", "WriteError"]),
    ("write timeout mid-upload", SUBMIT, TIMED_OUT_MID_UPLOAD, ServiceError, ["upload broke off", "part of a request"]),
]


@pytest.mark.parametrize("name,call,attempt,expected,words", ROWS, ids=[row[0] for row in ROWS])
def test_what_one_attempt_comes_to(name, call, attempt, expected, words):
    verdict = classify(call, attempt, 1)
    if isinstance(expected, dict):
        assert verdict == Done(expected)
    elif isinstance(expected, retry):
        assert isinstance(verdict, Retry), verdict
        assert verdict.retry_after == expected.retry_after
        assert verdict.rate_limited == (attempt.status == 429)
        if expected.condition is not None:
            assert verdict.condition == expected.condition
        if expected.problem is not None:
            assert verdict.problem == expected.problem
    else:
        assert isinstance(verdict, Fail), verdict
        assert type(verdict.error) is expected, f"{type(verdict.error).__name__}: {verdict.error}"
        text = str(verdict.error)
        for word in words:
            assert word in text, f"{word!r} missing from: {text}"
        assert TOKEN not in text
        if call.reads_job:
            assert verdict.error.request_id == "req-1"
        if expected is not OutcomeUnknownError:
            assert "may have been" not in text and "may be running" not in text


# --- "may have been charged": said only when the body may have arrived and no answer of RunComfy's came back ---------

CHARGE_ROWS = [
    ("connection broken after the whole body", BROKEN_AFTER_BODY, True),
    ("timed out waiting for the answer after the whole body", TIMED_OUT_AFTER_BODY, True),
    ("an answer that could not be decoded", UNDECODABLE_AFTER_BODY, True),
    ("200 that is not JSON", answer(200, None), True),
    ("200 over the answer cap", answer(200, unreadable=OVER_CAP), True),
    ("200 in stacked content codings", answer(200, unreadable=STACKED), True),
    ("413 over the answer cap", answer(413, unreadable=OVER_CAP), False),
    ("200 claiming JSON that is truncated", answer(200, None, Content_Type="application/json"), True),
    ("200 JSON that is not an object", answer(200, [JOB]), False),
    ("200 text/html (a login page)", answer(200, None, Content_Type="text/html"), False),
    ("gateway 502 after the whole body", answer(502), True),
    ("gateway 503 after the whole body", answer(503), True),
    ("gateway 504 after the whole body", answer(504), True),
    ("200 with the job", answer(200, JOB), False),
    ("gateway 502 before the whole body was sent", answer(502, body_complete=False), False),
    ("503 with RunComfy's 500001", answer(503, code="500001"), True),
    ("504 with RunComfy's 500001", answer(504, code="500001"), True),
    ("503 with RunComfy's 400004 (token refused)", answer(503, code="400004"), False),
    ("500 bare after the whole body", answer(500), True),
    ("500 {detail} after the whole body", answer(500, {"detail": "internal error"}), True),
    ("502 with a code that is not RunComfy's", answer(502, code="UPSTREAM_RESET"), True),
    ("500 {detail} before the whole body was sent", answer(500, {"detail": "internal error"}, body_complete=False), False),
    ("500 with RunComfy's 500001", answer(500, code="500001"), True),
    ("500 with RunComfy's 500001 before the whole body was sent", answer(500, code="500001", body_complete=False), False),
    ("500 with RunComfy's 400002", answer(500, code="400002"), False),
    ("connection broken mid-upload", BROKEN_MID_UPLOAD, False),
    ("write timeout mid-upload", TIMED_OUT_MID_UPLOAD, False),
    ("connection never opened", NEVER_CONNECTED, False),
    ("connect timeout", CONNECT_TIMEOUT, False),
    ("a redirect", answer(302, Location="https://login.example.com/"), False),
    ("a redirect with the job's JSON", answer(303, JOB), False),
    ("429 rate limited", answer(429, Retry_After="0"), False),
    ("401 token refused", answer(401), False),
    ("400002 balance too low", answer(400, code="400002"), False),
    ("413 before the upload was read", answer(413, body_complete=False), False),
    ("411 after draining the upload", answer(411), False),
    ("422 a value refused", answer(422), False),
    ("404 bare", answer(404), False),
]


@pytest.mark.parametrize("name,attempt,charged", CHARGE_ROWS, ids=[row[0] for row in CHARGE_ROWS])
def test_may_have_been_charged(name, attempt, charged):
    verdict = classify(SUBMIT, attempt, 1)
    said = isinstance(verdict, Fail) and isinstance(verdict.error, OutcomeUnknownError)
    assert said == charged, verdict
    if charged:
        assert "not sent again" in str(verdict.error) or "may be running" in str(verdict.error)
    elif isinstance(verdict, Fail):
        assert "may have" not in str(verdict.error) and "may be running" not in str(verdict.error)
    else:  # sent again only when nothing can have arrived, or it was refused
        assert isinstance(verdict, (Done, Retry))
        assert isinstance(verdict, Done) or attempt.status == 429 or attempt.failure is Transport.NOT_CONNECTED


# --- when the retries run out, and what each retry says ---------------------------------------------------------------


def test_a_submit_that_runs_out_of_retries_says_nothing_was_charged():
    verdict = classify(SUBMIT, NEVER_CONNECTED, 3)
    assert isinstance(verdict, Retry)
    error = verdict.exhausted
    assert type(error) is ServiceError and "3 tries" in str(error) and "nothing was charged" in str(error)
    assert "connection problem (ConnectError)" in str(error)


def test_a_read_that_runs_out_of_retries_keeps_the_services_error():
    verdict = classify(STATUS, answer(503, code="500001"), 5)
    error = verdict.exhausted
    assert type(error) is ServiceError and error.http_status == 503 and error.error_code == "500001"
    assert "(gave up after 5 tries)" in str(error) and error.request_id == "req-1"
    lost = classify(STATUS, NEVER_CONNECTED, 4).exhausted
    assert "lost contact with RunComfy after 4 tries (connection problem (ConnectError))" in str(lost)
    assert lost.request_id == "req-1"


@pytest.mark.parametrize(
    "call,attempt,delay,notice",
    [
        (STATUS, answer(429, Retry_After="1"), 1.0, "RunComfy busy (HTTP 429); retrying in 1 s; the job is still running"),
        (RESULT, answer(503), 2.4, "RunComfy unavailable (HTTP 503); retrying in 2 s; the job is still running"),
        (
            STATUS,
            NEVER_CONNECTED,
            0.4,
            "RunComfy unreachable (connection problem (ConnectError)); retrying in 0 s; the job is still running",
        ),
        (CATALOG, answer(200, None), 3.0, "RunComfy not answering properly (an unreadable answer); retrying in 3 s"),
        (
            SUBMIT,
            answer(429),
            20.0,
            "Submitting the job: HTTP 429 (rate limited); trying again in 20 s (no job was created, nothing is charged).",
        ),
        (
            SUBMIT,
            CONNECT_TIMEOUT,
            1.0,
            "Submitting the job: no answer in time (ConnectTimeout); trying again in 1 s (no job was created, nothing is charged).",
        ),
    ],
)
def test_each_retry_is_announced(call, attempt, delay, notice):
    assert retry_notice(call, classify(call, attempt, 1), delay) == notice


def test_retry_after_is_a_lower_bound_never_permission_to_hammer():
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=30.0)
    assert all(policy.delay(1, 0.0) >= 0.375 for _ in range(50))  # Retry-After: 0 still backs off
    assert policy.delay(1, 20.0) == 20.0
    assert policy.delay(1, 300.0) == 30.0  # no wait beyond the ceiling


# --- the loop itself, with scripted attempts (zero waits) -------------------------------------------------------------

NO_WAIT = RetryPolicy(max_attempts=4, base_delay_s=0.0, max_delay_s=0.0)


def run_loop(outcomes, classify_one, policy=NO_WAIT):
    """`with_retries` over a script of outcomes; (result or raised error, attempts made, retries heard)."""
    script, heard = list(outcomes), []

    async def attempt():
        try:
            raise ConnectionError("a library exception caught while attempting")
        except ConnectionError:
            return script.pop(0)

    async def loop():
        try:
            return await with_retries(attempt, classify_one, policy, on_retry=lambda retry, delay: heard.append((retry.problem, delay)))
        except Exception as error:  # noqa: BLE001 - the error is what the test looks at
            return error

    outcome = asyncio.run(loop())
    return outcome, len(outcomes) - len(script), heard


def submit_rules(attempt, tries):
    return classify(SUBMIT, attempt, tries)


def test_the_loop_retries_a_refused_submit_then_returns_the_job():
    result, attempts, heard = run_loop([answer(429, Retry_After="0"), NEVER_CONNECTED, answer(200, JOB)], submit_rules)
    assert result == JOB and attempts == 3
    assert [problem for problem, _ in heard] == ["HTTP 429 (rate limited)", "connection problem (ConnectError)"]


def test_the_loop_never_sends_a_lost_submit_again_and_attaches_nothing():
    error, attempts, heard = run_loop([BROKEN_AFTER_BODY, answer(200, JOB)], submit_rules)
    assert isinstance(error, OutcomeUnknownError) and attempts == 1 and not heard
    assert error.__cause__ is None and error.__context__ is None


def test_the_loop_gives_up_when_the_policy_says_so():
    error, attempts, heard = run_loop([NEVER_CONNECTED] * 10, submit_rules)
    assert type(error) is ServiceError and "4 tries" in str(error) and attempts == 4 and len(heard) == 3
    assert error.__context__ is None


# --- result downloads -------------------------------------------------------------------------------------------------

LABEL = "Result image 2"
HOP_REFUSED = DownloadError(f"{LABEL}: refusing to download from cdn.example.com (10.0.0.5): not a public host.", request_id="r-1")
DNS_HICCUP = DownloadError(f"{LABEL}: could not look up cdn.example.com (gaierror).", request_id="r-1", transient=True)

# (name, what one GET came to, tries so far, expected: bytes, retry(...) or (error type, transient), words)
DOWNLOAD_ROWS = [
    ("200 with the file", Fetched(data=b"PNG..."), 1, b"PNG...", ()),
    ("404 at first", Fetched(status=404), 1, retry(), ["not available (HTTP 404)"]),
    ("404 once more", Fetched(status=404), GONE_TRIES - 1, retry(), ["not available (HTTP 404)"]),
    ("404 for the last time", Fetched(status=404), GONE_TRIES, (DownloadError, True), ["not available (HTTP 404)", "change the seed"]),
    ("410 for the last time", Fetched(status=410), GONE_TRIES, (DownloadError, True), ["HTTP 410", "expired"]),
    ("403 for the last time", Fetched(status=403), GONE_TRIES, (DownloadError, True), ["HTTP 403"]),
    ("429 with Retry-After", Fetched(status=429, retry_after=3.0), 1, retry(3.0), ["HTTP 429"]),
    ("429 without Retry-After", Fetched(status=429), 7, retry(None), ["HTTP 429"]),
    ("503 with Retry-After", Fetched(status=503, retry_after=2.0), 1, retry(2.0), ["HTTP 503"]),
    ("500", Fetched(status=500), 20, retry(None), ["HTTP 500"]),
    ("connection reset", Fetched(transport="ReadError"), 1, retry(), ["ReadError"]),
    ("truncated file", Fetched(transport="RemoteProtocolError"), 2, retry(), ["RemoteProtocolError"]),
    ("400", Fetched(status=400), 1, (DownloadError, False), ["could not be downloaded (HTTP 400)"]),
    ("204 without the file", Fetched(status=204), 1, (DownloadError, False), ["HTTP 204"]),
    ("200 without a byte", Fetched(data=b""), 1, retry(), ["arrived empty"]),
    ("200 without a byte for the last time", Fetched(data=b""), GONE_TRIES, (DownloadError, True), ["arrived empty"]),
    ("a redirect hop to a private host", Fetched(refused=HOP_REFUSED), 1, (DownloadError, False), ["not a public host"]),
    ("a DNS hiccup while checking a hop", Fetched(refused=DNS_HICCUP), 1, retry(), ["could not look up"]),
]


@pytest.mark.parametrize("name,fetched,tries,expected,words", DOWNLOAD_ROWS, ids=[row[0] for row in DOWNLOAD_ROWS])
def test_what_one_download_comes_to(name, fetched, tries, expected, words):
    verdict = classify_download(fetched, tries, label=LABEL, request_id="r-1")
    if isinstance(expected, bytes):
        assert verdict == Done(expected)
        return
    if isinstance(expected, retry):
        assert isinstance(verdict, Retry), verdict
        assert verdict.retry_after == expected.retry_after
        text, error = verdict.problem, verdict.exhausted
        assert f"{LABEL} could not be downloaded after {tries} tries" in str(error) and error.transient
    else:
        assert isinstance(verdict, Fail), verdict
        error = verdict.error
        assert isinstance(error, expected[0]) and error.transient == expected[1]
        text = str(error)
    assert error.request_id == "r-1" and LABEL in str(error)
    for word in words:
        assert word in text, f"{word!r} missing from: {text}"


def test_a_gone_link_is_tried_gone_tries_times_and_a_busy_one_until_it_works():
    def rules(fetched, tries):
        return classify_download(fetched, tries, label=LABEL, request_id="r-1")

    forever = RetryPolicy.until_deadline(base_delay_s=0.0, max_delay_s=0.0)
    error, attempts, _ = run_loop([Fetched(status=404)] * 10, rules, forever)
    assert isinstance(error, DownloadError) and error.transient and "not available" in str(error) and attempts == GONE_TRIES
    busy = [Fetched(status=503), Fetched(status=429, retry_after=0.0), Fetched(transport="ReadError")] * 4
    data, attempts, heard = run_loop([*busy, Fetched(data=b"file")], rules, forever)
    assert data == b"file" and attempts == 13 and len(heard) == 12


# --- which answers are read at all ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_encoding,refused",
    [
        ("", None),
        ("identity", None),
        ("gzip", None),
        ("GZip", None),
        ("deflate", None),
        ("gzip, identity", None),
        ("gzip, gzip", "gzip, gzip"),  # each layer multiplies what one network read inflates to: never decoded
        ("deflate,gzip", "deflate, gzip"),
        ("br", "br"),  # not asked for: httpx would decode it whole, unbounded, where brotli is installed
        ("zstd", "zstd"),
        ("x-gzip", "x-gzip"),
    ],
)
def test_answers_are_read_only_in_the_content_codings_asked_for(content_encoding, refused):
    assert refused_codings(content_encoding) == refused
    assert ACCEPT_ENCODING == "gzip, deflate"


def test_the_answer_cap_is_a_few_mib():
    assert MAX_ANSWER_BYTES == 4 * 2**20


# --- numbers the service reports: shown only when they can be true ------------------------------------------------------

COST_ROWS = [
    ("a cost in USD", 0.09, 0.09),
    ("nothing charged", 0, 0.0),
    ("negative zero", -0.0, 0.0),
    ("a number as text", "0.12", 0.12),
    ("negative", -5, None),
    ("NaN", float("nan"), None),
    ("infinite", float("inf"), None),
    ("negative infinite", float("-inf"), None),
    ("NaN as text", "nan", None),
    ("400 digits", 10**400, None),
    ("true", True, None),
    ("absent", None, None),
    ("words", "free", None),
    ("an object", {"usd": 1}, None),
]


@pytest.mark.parametrize("name,value,cost", COST_ROWS, ids=[row[0] for row in COST_ROWS])
def test_only_a_finite_number_of_at_least_zero_is_a_cost(name, value, cost):
    got = cost_or_none(value)
    assert got == cost and (got is None or math.copysign(1.0, got) == 1.0)


QUEUE_ROWS = [
    ("first in line", 0, 0),
    ("a few ahead", 3, 3),
    ("a whole float", 3.0, 3),
    ("digits as text", "7", 7),
    ("the bound", 1_000_000, 1_000_000),
    ("past the bound", 1_000_001, None),
    ("negative", -5, None),
    ("10**18", 10**18, None),
    ("a fraction", 2.5, None),
    ("true", True, None),
    ("NaN", float("nan"), None),
    ("infinite", float("inf"), None),
    ("words", "soon", None),
    ("negative as text", "-1", None),
    ("absent", None, None),
    ("a list", [1], None),
]


@pytest.mark.parametrize("name,value,position", QUEUE_ROWS, ids=[row[0] for row in QUEUE_ROWS])
def test_only_a_whole_number_from_zero_to_a_million_is_a_queue_position(name, value, position):
    got = queue_position_or_none(value)
    assert got == position and (got is None or type(got) is int)


@pytest.mark.parametrize(
    "body,page",
    [
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", True),
        (b"\n\t  <html lang=en><title>Blocked</title>", True),
        (b"\xef\xbb\xbf<!doctype HTML>", True),  # a byte-order mark first, as some portals send
        (b'{"request_id": "abc"}', False),
        (b"\x89PNG\r\n\x1a\n<html>", False),  # an image that happens to hold the word
        (b"", False),
        (b"<htm", False),
        (b"<!-- generated by the filter -->\n<!DOCTYPE html><html>", True),  # a comment first
        (b"<!--a--><!-- b -->  <html>", True),
        (b'<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN">', True),
        (b"<head><title>Sign in</title></head>", True),  # the html tag is optional
        (b"<body onload='document.forms[0].submit()'>", True),
        (b"<title>Access denied</title>", True),
        (b"<meta http-equiv=refresh content='0;url=https://portal.example/'>", True),
        (b"<!doctypehtml><p>", True),
        ("<!DOCTYPE html><html>".encode("utf-16"), True),  # UTF-16 with its byte-order mark
        ("<html>".encode("utf-16-be"), False),  # without one it is not read as UTF-16
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', False),  # an SVG is no page
        (b"<!-- a comment that never ends <html>", False),
        (b"<headline>", False),
        (b" " * 5000 + b"<html>", False),  # beyond the bytes looked at
        (b"<!---->" * 700 + b"x", False),  # crafted to make a pattern backtrack: answered at once
    ],
)
def test_a_body_is_a_web_page_only_when_it_opens_as_one(body, page):
    assert opens_as_html_page(body) is page


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP", "AVIF"])
def test_an_image_labelled_as_a_web_page_is_still_the_image_in_any_format_the_decoder_reads(image_format):
    """A result file labelled text/html is a page only when it is no image: an AVIF, TIFF or BMP was taken for one, a
    paid result this machine could then never deliver."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format=image_format)
    assert _a_page("text/html; charset=utf-8", buffer.getvalue()) is None
    assert _a_page("text/html", b"BMW dealer login: access denied") == "text/html"  # two letters are no BMP
    assert _a_page("text/html", b"Access denied by policy") == "text/html"


@pytest.mark.parametrize("status", [204, 302, 400, 401, 405, 407, 451])
def test_an_http_answer_that_is_not_the_file_keeps_the_paid_job_collectable(status):
    """A status no rule names (a redirect without a Location, a proxy asking for its password) says nothing about the
    images: before, it made the paid job "unusable" and forgotten, and the re-run paid again."""
    verdict = classify_download(Fetched(status=status), 1, label=LABEL, request_id="r-1")
    assert isinstance(verdict, Fail) and verdict.error.collectable and f"HTTP {status}" in str(verdict.error)
