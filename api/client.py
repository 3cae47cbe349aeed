"""Async HTTP client for the RunComfy Model API: submit, status, result, cancel, and the catalog price.

Every call goes through one send loop (`RunComfyClient._call`): `_send_once` sends one attempt and
captures what came of it as plain data (an `Attempt`: the answer's status, headers and JSON, or the kind
of transport failure, and whether the whole body was handed over); `classify`, a pure function, says
what it means; `retries.with_retries` returns, raises, or waits and sends again. What each outcome means:

    what one attempt came to                  a read (status, result, cancel, catalog)  the submit (paid, no idempotency key)
    ----------------------------------------  ----------------------------------------  ---------------------------------------------
    2xx with a JSON object (any Content-Type) done                                      done: its request_id is the job
    2xx HTML (text/html, xhtml, or a body     retry                                     ServiceError: not the API (a login page, a
      that opens as an HTML document) or JSON                                             captive portal); no job
      that is not an object ([], "ok", 5)
    2xx otherwise unreadable (truncated or    retry                                     OutcomeUnknownError: accepted, unreadable
      undecodable JSON, text/plain, null,
      or not read: see below)
    3xx (redirects are never followed)        as a 2xx                                  ServiceError: not the API; no job
    429                                       retry; Retry-After is a lower bound       retry; every submit of the process waits
    5xx (bare, {"detail": …}, a proxy's code, retry                                     OutcomeUnknownError once the whole body was
      RunComfy's own 500001)                                                              sent (ServiceError before: no job)
    5xx with a refusal's code (400001,        retry                                     the ServiceError it says; no job
      400002, 400004, 403001)
    408, 425, 404 without 404001              retry                                     ServiceError: no job
    any other 4xx, or 404001                  the ServiceError it says (Authentication, the ServiceError it says; no job
                                                InsufficientBalance, RequestNotFound …)
    the connection never opened               retry                                     retry: nothing left this machine
    broken, timed out or undecodable once     retry                                     OutcomeUnknownError once the whole body was
      the connection opened                                                               sent; ServiceError before: no job
    retries used up                           the last error, "gave up after N tries"   ServiceError: no job

An answer past `MAX_ANSWER_BYTES` once decoded, or in content codings that were not asked for (two layers,
brotli, zstd), is not read: it is judged by its status and headers alone, as an answer without JSON.

Invariants this module owns:

- The submit body is JSON sent with a Content-Length, the framing RunComfy's own
  clients use; it is never chunked, and never larger than `MAX_BODY_BYTES`.
- The submit POST costs money and has no idempotency key. It is retried only when it
  provably never arrived (the connection never opened) or was refused (429).
- "May have been charged" (`OutcomeUnknownError`) is said only when the whole body was
  handed to the connection and no answer of RunComfy's came back: a dropped connection or a
  timeout after the upload, an answer that cannot be read (but not one that is plainly not the
  API, such as a login page: that means no job), or a 5xx without one of RunComfy's
  refusal codes (RunComfy's own 500001 included: a server error after the whole request arrived
  does not prove the job was not made; a gateway or proxy may have forwarded it).
  An upload that broke off part way, a request that could not leave this machine, a 5xx with
  a refusal's code (balance, token …), and every 4xx (401, 411, 413 …, even when sent before the
  body was read) mean no job exists: the error says so and nothing is held.
- Reads of a paid job (status, result) retry through 429 (with or without
  Retry-After), 5xx, unreadable answers and refused connections with `job_retry`,
  which by default never gives up by itself: the job's deadline ends the wait. Each
  retry is announced ("RunComfy busy (HTTP 429); retrying in 20 s; the job is still running").
- One `RetryPolicy` (see `retries`) bounds every retry loop by attempts and by time;
  `Retry-After` is a lower bound on the next wait, never permission to hammer
  (`Retry-After: 0` still backs off), and no wait exceeds ~30 s.
- No answer is held past `MAX_ANSWER_BYTES` (4 MiB) once decoded: `_send_once` streams it,
  counts what httpx decodes and stops, so a few KB of gzip that inflate to gigabytes cost
  what one network read inflates to. Only gzip or deflate, one layer, is decoded.
- Status polls of a process to one service are paced together (`SharedPace`), and a 429
  on a submit makes every submit of the process wait (one backoff for a whole batch).
- The catalog price is looked up in the background and cached per service; a failed or
  slow lookup never blocks or fails a run.
- No exception raised here has an httpx exception as its cause or context: those hold
  the request, and the request holds the token. `_send_once` turns every httpx exception
  into plain data before anything is raised.

Every request the pack makes (API calls here, result files in `downloads`) goes through one retry loop,
`with_retries`: one attempt, whose outcome is plain data (never an exception); `classify`, a pure function, says
Done (returned), Fail (raised) or Retry (wait `policy.delay(tries, retry_after)` and try again; `retry.exhausted` is
raised once `policy.gives_up`). `RetryPolicy` bounds every loop by attempts and by time spent waiting; Retry-After
is a lower bound on the next wait, never permission to hammer (`Retry-After: 0` still backs off), and no wait
exceeds `max_delay_s`. Each retry is announced before its wait. The loop raises only the errors the classifier made,
outside any `except` block: they carry no library exception as their cause or context.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import functools
import json
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, Union
from urllib.parse import quote

import httpx

from .config import DEFAULT_BASE_URL, Credentials, proxy_for, unusable_proxy
from .errors import _CODE_MESSAGES, ConfigurationError, InputError, OutcomeUnknownError, RunComfyError, ServiceError, error_from_response
from .events import say
from .job import CancelResult, Job, JobResult, JobStatus, UploadTracker
from .schema import MAX_BODY_BYTES, MODEL_ID, EditSequentialRequest
from .shared import LOOP_STATE, PRICES, tls_context

QUEUED_STATES = frozenset({"in_queue", "queued", "pending"})
RUNNING_STATES = frozenset({"in_progress", "running", "processing"})
# RunComfy's published error codes (the spec's list).
DOCUMENTED_CODES = frozenset(_CODE_MESSAGES)
# The codes that say a submit was refused before any work (unknown model, balance, token, account): whatever the HTTP
# status that carries them, no job exists. Any other 5xx to a submit whose whole body was sent, RunComfy's own 500001
# included, may have come after the job was made.
REFUSED_BEFORE_WORK = frozenset({"400001", "400002", "400004", "403001"})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})  # a page for a browser: never an answer of the API
PRICE_LOOKUP_TIMEOUT_S = 10.0
# An answer of the API is a few hundred bytes (a result with 15 URLs a few KB): past this, once decoded, it is not read.
MAX_ANSWER_BYTES = 4 * 2**20
# The content codings asked for, and the only ones decoded, one layer at most: httpx inflates each network read whole,
# so one layer of gzip or deflate bounds a read's growth (about 1000 times); a second layer, brotli or zstd would not.
ACCEPT_ENCODING = "gzip, deflate"
_READ_CODINGS = frozenset({"gzip", "deflate"})
MAX_QUEUE_POSITION = 1_000_000  # far past any real queue: a larger (or negative) position is a broken answer, not a place

SUBMIT_ACTION = "Submitting the job"
STATUS_INTERVAL_S = 0.22  # all status polls of a process to one service together: under five a second

log = logging.getLogger("runcomfy.seedream")


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    read_s: float = 30.0
    submit_read_s: float = 120.0  # the service may take a while to store large data-URI references
    write_s: float = 120.0


@dataclass(frozen=True)
class Price:
    usd_per_image: float

    def estimate(self, images: int) -> str:
        return f"Estimated cost: up to ${self.usd_per_image * images:.2f} ({images} x ${self.usd_per_image:.3f} per image)"


def normalise_state(raw: Any) -> str:
    state = str(raw or "").strip().lower()
    if state in QUEUED_STATES:
        return "in_queue"
    if state in RUNNING_STATES:
        return "in_progress"
    if state in ("canceled", "cancelled"):
        return "cancelled"
    return state


def output_urls(output: Any) -> tuple[str, ...]:
    """Image URLs of a result's `output`: `images` first, then `image`."""
    if not isinstance(output, Mapping):
        return ()
    found: list[str] = []
    items = output.get("images")
    if isinstance(items, (list, tuple)):
        for item in items:
            url = item.get("url") if isinstance(item, Mapping) else item
            if isinstance(url, str) and url:
                found.append(url)
    if not found:
        single = output.get("image")
        url = single.get("url") if isinstance(single, Mapping) else single
        if isinstance(url, str) and url:
            found.append(url)
    return tuple(found)


def cost_or_none(value: Any) -> float | None:
    """The result's `cost` in USD: only a finite number >= 0 is a cost (as for the catalog price); else None, not shown."""
    if value is None or isinstance(value, bool):
        return None
    try:
        cost = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return cost + 0.0 if math.isfinite(cost) and cost >= 0 else None  # + 0.0: never "$-0.00"


def queue_position_or_none(value: Any) -> int | None:
    """`queue_position`: only a whole number from 0 to `MAX_QUEUE_POSITION` is a place in a queue; else None, not shown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None  # NaN and infinities are not whole
    elif isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_QUEUE_POSITION else None


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested beyond reason
        return None


def describe_transport_error(exc: httpx.HTTPError) -> str:
    """A short, token-free description of a network failure or an answer that could not be read."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({kind})"
    if isinstance(exc, httpx.DecodingError):
        return f"an answer that could not be decoded ({kind})"
    return f"connection problem ({kind})"


def _path_part(request_id: str) -> str:
    """A request id as one path segment, whatever it holds (a "/" or ".." cannot reach another endpoint)."""
    return quote(request_id, safe="").replace(".", "%2E")


def _may_be_charged(action: str, what_happened: str) -> OutcomeUnknownError:
    return OutcomeUnknownError(
        f"{action}: {what_happened}. RunComfy may have created the job, and it may have been charged; it was not sent "
        "again. Look for it in your RunComfy dashboard before running again, or change the seed to submit anew."
    )


def refused_codings(content_encoding: str) -> str | None:
    """The answer's content codings when they are not read at all (more than one, or one not asked for), else None."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
    if len(codings) > 1 or (codings and codings[0] not in _READ_CODINGS):
        return ", ".join(codings)
    return None


async def _read_capped(response: httpx.Response) -> tuple[bytes, str]:
    """The answer's decoded body, and "" ; or b"" and why it was not read (past `MAX_ANSWER_BYTES` once decoded, codings)."""
    refused = refused_codings(", ".join(response.headers.get_list("content-encoding", split_commas=True)))
    if refused is not None:
        return b"", f"in content codings that were not asked for ({refused})"
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():  # decoded: a gzip bomb is counted as what it inflates to
        total += len(chunk)
        if total > MAX_ANSWER_BYTES:
            return b"", f"over the {MAX_ANSWER_BYTES // 2**20} MiB limit once decoded"
        chunks.append(chunk)
    return b"".join(chunks), ""


def _accepted_unreadable(action: str) -> OutcomeUnknownError:
    return OutcomeUnknownError(
        f"{action}: RunComfy accepted it but its answer had no readable request id. The job may "
        "be running and charged; look for it in your RunComfy dashboard before running again."
    )


# --- the outcome rules: plain data in, a verdict out ------------------------------------------


class Transport(enum.Enum):
    """How an attempt failed without an answer."""

    NOT_CONNECTED = "not connected"  # the connection never opened (or none was free in time): nothing left this machine
    BROKEN = "broken"  # it opened, then broke or timed out, or the answer could not be read or decoded


@dataclass(frozen=True)
class Attempt:
    """What one send of a call came to: an answer (`status`), or a transport `failure`. Plain data, no httpx object."""

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # the answer's, names in lower case
    body: Any = None  # the answer's decoded JSON; None when it was not JSON or was not read
    retry_after: float | None = None  # seconds, from the answer's Retry-After, read when it arrived
    failure: Transport | None = None
    problem: str = ""  # what the failure was, in words that hold neither the request nor the token
    body_complete: bool = True  # the whole request body was handed to the connection (True for a call without one)
    unreadable: str = ""  # why the answer's body was not read ("over the 4 MiB limit once decoded"); "" when it was
    html_page: bool = False  # the answer's body opens as an HTML document, whatever its Content-Type says

    @classmethod
    def answered(
        cls,
        status: int,
        headers: Mapping[str, str],
        body: Any,
        *,
        body_complete: bool = True,
        unreadable: str = "",
        html_page: bool = False,
    ) -> Attempt:
        plain = {name.lower(): value for name, value in headers.items()}
        retry_after = parse_retry_after(plain.get("retry-after"))
        return cls(
            status,
            plain,
            None if unreadable else body,
            retry_after,
            body_complete=body_complete,
            unreadable=unreadable,
            html_page=html_page,
        )

    @classmethod
    def failed(cls, failure: Transport, problem: str, *, body_complete: bool = True) -> Attempt:
        return cls(failure=failure, problem=problem, body_complete=body_complete)


@dataclass(frozen=True)
class Call:
    """What the outcome rules need to know about a call."""

    action: str  # how its messages begin: "Submitting the job"
    idempotent: bool = True  # False for the submit: sent twice, it may be paid twice
    request_id: str | None = None  # the job it is about (status, result, cancel)
    redact: str | None = field(default=None, repr=False)  # the token, hidden wherever the service echoes it
    proxy: str | None = None  # the proxy it goes through, named ("the proxy host:port set by HTTPS_PROXY"); None: direct

    @property
    def reads_job(self) -> bool:
        """About a job that exists: retried with `job_retry`, and its retries say the job is still running."""
        return bool(self.request_id)


def classify(call: Call, attempt: Attempt, tries: int = 1) -> Verdict[Mapping[str, Any]]:
    """What `attempt` (the `tries`-th) of `call` comes to: the one place the module docstring's table lives.

    A pure function of plain data, so the rules can be tested as a table. Each rule has one place: one on
    error answers (say, any 5xx without RunComfy's error format after the body arrived) in `_answered_error`;
    one on successful answers (say, a 200 that is plainly not the API, such as text/html, from
    `attempt.headers`) in `_answered_ok`; a cap on an answer's decoded size is measured by `_send_once`,
    recorded in `Attempt` and judged here.
    """
    if attempt.failure is not None:
        return _without_answer(call, attempt, tries)
    status = attempt.status or 0
    if not call.idempotent and 300 <= status < 400:
        return Fail(_redirected(call.action, status, _hidden(call, attempt.headers.get("location", ""))))
    if status < 400:
        return _answered_ok(call, attempt, tries)
    return _answered_error(call, attempt, tries)


def _hidden(call: Call, text: str) -> str:
    """`text` from the answer's headers (a Location, its codings) with the token hidden, should the other side echo it."""
    return text.replace(call.redact, "<token>") if call.redact else text


def _without_answer(call: Call, attempt: Attempt, tries: int) -> Verdict[Mapping[str, Any]]:
    if attempt.failure is Transport.NOT_CONNECTED or call.idempotent:
        return _retry(call, tries, attempt.problem, "unreachable")
    if not attempt.body_complete:
        return Fail(
            ServiceError(
                f"{call.action} failed: the upload broke off before the whole request was sent ({attempt.problem}). RunComfy "
                "cannot have created a job from part of a request, so nothing was charged. Check your connection and run again."
            )
        )
    return Fail(
        _may_be_charged(call.action, f"the request was sent but the connection failed before RunComfy answered ({attempt.problem})")
    )


def _not_the_api_error(action: str, status: int, page: str) -> ServiceError:
    """A definite answer from something that is not the API (a login page, a captive portal): no job."""
    return ServiceError(
        f"{action} failed: the service address answered with something that is not the RunComfy API (HTTP {status}, "
        f"{page}), as a login page or a proxy does. No job was created and nothing was charged. Check "
        "RUNCOMFY_MODEL_API_BASE and your network, then run again."
    )


def _redirected(action: str, status: int, location: str) -> ServiceError:
    """A definite answer from something that is not the API (a login page, a proxy): no job."""
    where = location[:120]
    return ServiceError(
        f"{action} failed: the service address answered with a redirect (HTTP {status}"
        + (f" to {where}" if where else "")
        + "), as a login page or a proxy does. No job was created and nothing was charged. Check "
        "RUNCOMFY_MODEL_API_BASE and your network, then run again."
    )


def _not_the_api(attempt: Attempt) -> str | None:
    """What a successful answer without a JSON object is when it is plainly not the API's, else None.

    An HTML page (a login or captive-portal page) or valid JSON that is not an object (`[]`, `"ok"`, `5`): a page
    in front of the API answered, not RunComfy, which answers every call with an object. JSON that is truncated or
    does not decode, text/plain and a literal `null` (read as no JSON) are not plain enough: they may be RunComfy's
    answer damaged on the way.
    """
    media_type = attempt.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type in HTML_TYPES:
        return media_type
    if attempt.html_page:  # a portal page sent as text/plain or octet-stream: no damage turns JSON into a document
        return "an HTML page"
    if attempt.body is not None:
        return "JSON that is not an object"
    return None


def _answered_ok(call: Call, attempt: Attempt, tries: int) -> Verdict[Mapping[str, Any]]:
    if isinstance(attempt.body, Mapping):  # whatever its Content-Type says: a mislabelled answer of RunComfy's is still its answer
        return Done(attempt.body)
    page = _not_the_api(attempt)
    if call.idempotent:
        if page is not None:
            problem = f"an answer that is not the API ({page})"
        else:
            problem = f"an answer {_hidden(call, attempt.unreadable)}" if attempt.unreadable else "an unreadable answer"
        return _retry(call, tries, problem, "not answering properly")
    if page is not None:
        return Fail(_not_the_api_error(call.action, attempt.status or 0, page))
    if attempt.unreadable:  # the body had arrived, and what came back was not read: it may hold the job
        return Fail(_may_be_charged(call.action, f"the answer was {_hidden(call, attempt.unreadable)}, so it was not read"))
    return Fail(_accepted_unreadable(call.action))  # accepted, but what was accepted cannot be read


def _answered_error(call: Call, attempt: Attempt, tries: int) -> Verdict[Mapping[str, Any]]:
    status = attempt.status or 0
    error = error_from_response(status, attempt.body, action=call.action, request_id=call.request_id, redact=call.redact)
    if not call.idempotent and status >= 500 and error.error_code not in REFUSED_BEFORE_WORK and attempt.body_complete:
        # The whole request was sent: a server error (RunComfy's 500001, a gateway's bare 502, a proxy's own code) may
        # have come after the job was made, so it is never taken for "no job".
        if error.error_code in DOCUMENTED_CODES:
            what = f"HTTP {status} came back with RunComfy's server error [error_code {error.error_code}] after the whole request was sent"
        else:
            what = (
                f"HTTP {status} came back without RunComfy's documented error format (not RunComfy's answer, as a gateway or "
                "proxy in front of it gives) after the whole request was sent"
            )
        return Fail(_may_be_charged(call.action, what))
    if status == 429:
        problem = "HTTP 429" + ("" if call.idempotent else " (rate limited)")
        return _retry(call, tries, problem, "busy", error, retry_after=attempt.retry_after, rate_limited=True)
    if call.idempotent and (status >= 500 or status in (408, 425) or (status == 404 and error.error_code != "404001")):
        return _retry(call, tries, f"HTTP {status}", "unavailable", error)  # a bare 404 is a proxy or an edge in trouble
    return Fail(error)  # RunComfy's own word


def _retry(
    call: Call,
    tries: int,
    problem: str,
    condition: str,
    error: ServiceError | None = None,
    *,
    retry_after: float | None = None,
    rate_limited: bool = False,
) -> Retry:
    exhausted = _gave_up(call, tries, problem, error)
    return Retry(problem, exhausted, retry_after=retry_after, condition=condition, rate_limited=rate_limited)


def _gave_up(call: Call, tries: int, problem: str, error: ServiceError | None) -> RunComfyError:
    """What is raised when the policy allows no more tries after this one."""
    if not call.idempotent:
        check = (
            f"Check that {call.proxy} is running and reachable, or unset that variable for ComfyUI,"
            if call.proxy
            else "Check your connection"
        )
        return ServiceError(
            f"{call.action} failed: RunComfy could not be reached or turned it away ({problem}; {tries} tries). "
            f"No job was created and nothing was charged. {check} and run again."
        )
    if error is not None:
        return type(error)(
            f"{error} (gave up after {tries} tries)", http_status=error.http_status, error_code=error.error_code, request_id=call.request_id
        )
    return ServiceError(f"{call.action} failed: lost contact with RunComfy after {tries} tries ({problem}).", request_id=call.request_id)


def retry_notice(call: Call, retry: Retry, delay: float) -> str:
    """What the user is told before a retry's wait of `delay` seconds."""
    if not call.idempotent:
        return f"{call.action}: {retry.problem}; trying again in {delay:.0f} s (no job was created, nothing is charged)."
    still_running = "; the job is still running" if call.reads_job else ""
    return f"RunComfy {retry.condition} ({retry.problem}); retrying in {delay:.0f} s{still_running}"


class RunComfyClient:
    """One authenticated connection pool to the Model API. Use as `async with RunComfyClient(...)`.

    `retry` bounds the submit's retries (only when nothing can have arrived) and `job_retry`
    the reads of a job that exists; each retry is announced as an event (`events.say`).
    """

    def __init__(
        self,
        credentials: Credentials,
        base_url: str = DEFAULT_BASE_URL,
        *,
        retry: RetryPolicy | None = None,
        job_retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        status_interval_s: float = STATUS_INTERVAL_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.status_interval_s = status_interval_s
        self.retry = retry or RetryPolicy()
        self.job_retry = job_retry or RetryPolicy.until_deadline()
        self.timeouts = timeouts or Timeouts()
        t = self.timeouts
        self._token = credentials.token  # only to keep it out of what the service echoes back
        if (unusable := unusable_proxy()) is not None:  # httpx would fail with its own ImportError or ValueError
            raise ConfigurationError(unusable)
        proxy = proxy_for(self.base_url + "/")
        self._proxy = str(proxy) if proxy is not None else None
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers={"Authorization": f"Bearer {credentials.token}", "Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING},
            timeout=httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.connect_s),
            follow_redirects=False,
            verify=tls_context(),
        )

    async def __aenter__(self) -> RunComfyClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # --- calls -------------------------------------------------------------------------------

    async def submit(self, request: EditSequentialRequest, *, upload: UploadTracker | None = None) -> Job:
        """POST the job once, with a Content-Length; its handle. See the module docstring for what each failure means.

        `upload.complete` turns True once the last byte has been handed to the connection: before that,
        no job can exist.
        """
        upload = upload or UploadTracker()
        pieces = request.validate().body_pieces()  # nothing is sent that breaks a rule of the schema
        length = sum(len(piece) for piece in pieces)
        if length > MAX_BODY_BYTES:
            raise InputError(
                "images",
                f"the request would be {length / 2**20:.0f} MiB; the limit is {MAX_BODY_BYTES / 2**20:.0f} MiB. "
                "Use fewer or smaller reference images.",
            )

        async def tracked() -> AsyncIterator[bytes]:
            upload.complete = False
            for index, piece in enumerate(pieces):
                if index == len(pieces) - 1 and upload.on_last_piece is not None:
                    await upload.on_last_piece()
                yield piece
            upload.complete = True  # reached only once httpx asked for more after writing the last piece

        data = await self._call(
            "POST",
            f"models/{MODEL_ID}",
            action=SUBMIT_ACTION,
            idempotent=False,
            body=tracked,
            headers={"Content-Type": "application/json", "Content-Length": str(length)},
            upload=upload,
        )
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise _accepted_unreadable(SUBMIT_ACTION)
        return Job(self, request_id, just_submitted=True)

    async def status(self, request_id: str) -> JobStatus:
        data = await self._call("GET", f"requests/{_path_part(request_id)}/status", action="Checking the job status", request_id=request_id)
        return JobStatus(request_id, normalise_state(data.get("status")), queue_position_or_none(data.get("queue_position")))

    async def result(self, request_id: str) -> JobResult:
        data = await self._call(
            "GET",
            f"requests/{_path_part(request_id)}/result",
            action="Fetching the job result",
            request_id=request_id,
            params={"include_cost": "true"},
        )
        error = data.get("error") or data.get("error_message")
        if isinstance(error, Mapping):
            error = error.get("message") or json.dumps(error)[:300]
        if error:
            error = str(error).replace(self._token, "<token>")
        return JobResult(
            request_id=request_id,
            state=normalise_state(data.get("status")),
            urls=output_urls(data.get("output")),
            error=str(error) if error else None,
            cost_usd=cost_or_none(data.get("cost")),
        )

    async def cancel(self, request_id: str) -> CancelResult:
        # Cancelling twice is harmless, so this call retries like a read.
        data = await self._call("POST", f"requests/{_path_part(request_id)}/cancel", action="Cancelling the job", request_id=request_id)
        return CancelResult(request_id, str(data.get("outcome") or "").lower(), normalise_state(data.get("status")) or None)

    async def model_info(self, *, announce: bool = True) -> Mapping[str, Any]:
        """The model's catalog entry (price, schema); a refused token is an `AuthenticationError`."""
        return await self._call("GET", f"models/{MODEL_ID}", action="Reading the model catalog", announce=announce)

    async def price(self, *, fresh: bool = False) -> Price | None:
        """The model's catalog price per image, cached for an hour per service; None when it cannot be had.
        `fresh`: read the catalog now (a spending limit checks what a job costs today, not an hour ago); a
        catalog that failed moments ago is still not asked again."""
        key = (self.base_url, MODEL_ID)  # never the token
        cached = None if fresh else PRICES.get(key)
        if cached is not None or PRICES.failed_recently(key):
            return cached
        return await asyncio.shield(LOOP_STATE.lookup(("price", key), lambda: self._look_up_price(key)))

    async def _look_up_price(self, key: tuple[str, str]) -> Price | None:
        try:
            info = await asyncio.wait_for(self.model_info(announce=False), PRICE_LOOKUP_TIMEOUT_S)
            value = info["base_price_usd"]
            if isinstance(value, bool) or not (0 <= float(value) < 1000):  # NaN, infinite, negative: no estimate
                return None
            price = Price(float(value))
        except (RunComfyError, asyncio.TimeoutError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            log.debug("price lookup failed: %s", type(exc).__name__)  # RuntimeError: its client was closed meanwhile
            PRICES.remember_failure(key)
            return None
        PRICES.remember(key, price)
        return price

    # --- the one send loop -------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        action: str,
        idempotent: bool = True,
        request_id: str | None = None,
        params: Mapping[str, str] | None = None,
        body: Callable[[], AsyncIterator[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        upload: UploadTracker | None = None,
        announce: bool = True,
    ) -> Mapping[str, Any]:
        """Send one call and return its JSON object, retrying what `classify` says may be retried.

        `idempotent=False` (the submit) is what makes a lost answer "may have been charged" instead of a retry;
        a call about a job (`request_id`) retries with `job_retry`, any other with `retry`.
        """
        call = Call(action, idempotent, request_id, redact=self._token, proxy=self._proxy)

        send = functools.partial(
            self._send_once, method, path, idempotent=idempotent, params=params, body=body, headers=headers, upload=upload
        )
        policy = self.job_retry if call.reads_job else self.retry
        return await with_retries(send, functools.partial(classify, call), policy, on_retry=self._retry_heard(call, announce))

    async def _send_once(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        params: Mapping[str, str] | None,
        body: Callable[[], AsyncIterator[bytes]] | None,
        headers: Mapping[str, str] | None,
        upload: UploadTracker | None,
    ) -> Attempt:
        """One attempt, paced and sent, and what came of it. No httpx exception leaves here, and none is kept."""
        pace = LOOP_STATE.pace(self.base_url)
        options: dict[str, Any] = {"params": params, "headers": headers}
        if body is not None:
            options["content"] = body()
        if not idempotent:
            t = self.timeouts
            options["timeout"] = httpx.Timeout(connect=t.connect_s, read=t.submit_read_s, write=t.write_s, pool=t.connect_s)
            await pace.submit_turn()
        elif path.endswith("/status"):
            await pace.status_turn(self.status_interval_s)
        try:
            async with self._http.stream(method, path, **options) as response:  # streamed, so that no answer is held past the cap
                data, unreadable = await _read_capped(response)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError) as exc:
            # ProxyError: the proxy refused to open the tunnel (407, 502 …): nothing reached RunComfy
            failure, problem = Transport.NOT_CONNECTED, describe_transport_error(exc) + self._through()
        except httpx.HTTPError as exc:  # broken, timed out, or an answer that could not be read or decoded
            failure, problem = Transport.BROKEN, describe_transport_error(exc) + self._through()
        else:
            complete = upload is None or upload.complete
            body = None if unreadable else _json_or_none(data)
            page = opens_as_html_page(data)
            return Attempt.answered(
                response.status_code, response.headers, body, body_complete=complete, unreadable=unreadable, html_page=page
            )
        return Attempt.failed(failure, problem, body_complete=upload is None or upload.complete)

    def _through(self) -> str:
        return f" through {self._proxy}" if self._proxy else ""

    def _retry_heard(self, call: Call, announce: bool) -> RetryHeard:
        """What happens before each retry's wait: a submit's 429 holds every submit of the process; the notice."""
        pace = LOOP_STATE.pace(self.base_url)

        def heard(retry: Retry, delay: float) -> None:
            if not call.idempotent and retry.rate_limited:
                pace.back_off_submits(delay)  # every submit of this process waits: one backoff for a whole batch
            if announce:
                say(retry_notice(call, retry, delay))

        return heard


T = TypeVar("T")
O = TypeVar("O")  # noqa: E741 - what one attempt came to


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and by total time spent waiting.

    `max_attempts=None` and `budget_s=None` retry without limit: for reads of a paid job,
    whose own deadline is what ends the wait.
    """

    max_attempts: int | None = 8
    budget_s: float | None = 180.0
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Wait before retry number `attempt` (1-based): backoff with +-25% jitter, at least `retry_after`, at most `max_delay_s`."""
        backoff = min(self.max_delay_s, self.base_delay_s * (2 ** min(attempt - 1, 30))) * random.uniform(0.75, 1.25)
        if retry_after is not None:
            backoff = max(backoff, retry_after)
        return min(backoff, self.max_delay_s)

    def gives_up(self, attempt: int, waited_s: float, next_delay_s: float) -> bool:
        """True when `attempt` tries were the last, or the next wait would pass the time budget."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return True
        return self.budget_s is not None and waited_s + next_delay_s > self.budget_s

    @classmethod
    def until_deadline(cls, *, base_delay_s: float = 0.5, max_delay_s: float = 30.0) -> RetryPolicy:
        """Never give up by itself: the caller's deadline (a paid job's) ends the retries."""
        return cls(max_attempts=None, budget_s=None, base_delay_s=base_delay_s, max_delay_s=max_delay_s)


_PAGE_LOOKS_AT = 4096  # bytes of the body read for its opening: room for a licence comment before the page
_BYTE_ORDER_MARKS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_PAGE_START = re.compile(rb"<!doctype\s*html|<(?:html|head|body|title|meta|script)[\s/>]")  # after what may precede it


def opens_as_html_page(data: bytes) -> bool:
    """Whether an answer's body begins as an HTML document: a login, captive-portal or block page answering in place
    of the API or of a file, whatever its Content-Type. Whitespace, comments and an XML prolog may come first, the
    page may open with its <head> or <body> alone, and it may be UTF-8 or UTF-16 with a byte-order mark. Neither a
    JSON answer nor an image file opens so. Linear in the bytes looked at, however they are crafted."""
    opening = data[:_PAGE_LOOKS_AT]
    for mark, codec in _BYTE_ORDER_MARKS:
        if opening.startswith(mark):
            opening = opening[len(mark) :].decode(codec, "replace").encode("utf-8", "replace")
            break
    opening = opening.lower()
    while True:
        opening = opening.lstrip()
        if opening.startswith(b"<!--"):
            end = opening.find(b"-->", 4)
            opening = opening[end + 3 :] if end >= 0 else b""
        elif opening.startswith(b"<?xml"):
            end = opening.find(b">")
            opening = opening[end + 1 :] if end >= 0 else b""
        else:
            return _PAGE_START.match(opening) is not None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), >= 0; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds == float("inf"):  # NaN, inf
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class Done(Generic[T]):
    """The attempt succeeded: `value` is what the caller gets."""

    value: T


@dataclass(frozen=True)
class Fail:
    """The attempt's outcome is final: `error` is raised, with no retry."""

    error: Exception


@dataclass(frozen=True)
class Retry:
    """Worth another try, after at least `retry_after` seconds (the server's Retry-After, if it gave one).

    `problem` says what went wrong ("HTTP 503", "connection problem (ReadError)"); `condition` how the
    service seems to a user ("busy", "unavailable", "unreachable", "not answering properly"); `rate_limited`
    marks a 429. `exhausted` is raised when the policy allows no more tries.
    """

    problem: str
    exhausted: Exception
    retry_after: float | None = None
    condition: str = "unavailable"
    rate_limited: bool = False


Verdict = Union[Done[T], Retry, Fail]  # noqa: UP007 - a generic alias, subscripted at run time
RetryHeard = Callable[[Retry, float], None]  # (the retry, the wait in seconds before it)


async def with_retries(
    attempt: Callable[[], Awaitable[O]],
    classify: Callable[[O, int], Verdict[T]],
    policy: RetryPolicy,
    *,
    on_retry: RetryHeard | None = None,
) -> T:
    """Attempt, classify (with the number of tries so far), then return, raise, or wait and attempt again."""
    tries = 0
    waited = 0.0
    while True:
        tries += 1
        verdict = classify(await attempt(), tries)
        if isinstance(verdict, Done):
            return verdict.value
        if isinstance(verdict, Fail):
            raise verdict.error
        delay = policy.delay(tries, verdict.retry_after)
        if policy.gives_up(tries, waited, delay):
            raise verdict.exhausted
        if on_retry is not None:
            on_retry(verdict, delay)
        await asyncio.sleep(delay)
        waited += delay
