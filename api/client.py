"""Async HTTP client for the RunComfy Model API: submit, status, result, cancel.

Invariants this module owns:

- The submit body is JSON sent with a Content-Length, the framing RunComfy's own
  clients use; it is never chunked, and never larger than `MAX_BODY_BYTES`.
- The submit POST costs money and has no idempotency key. It is retried only when it
  provably never arrived (the connection never opened) or was refused (429).
- "May have been charged" (`OutcomeUnknownError`) is said only when the whole body was
  handed to the connection and no answer came back: a dropped connection or a timeout
  after the upload, an answer that cannot be read, or a gateway's 502/503/504 without
  RunComfy's error code. An upload that broke off part way, a
  request that could not leave this machine, and every other HTTP answer (401, 411,
  413, 500 …, even when sent before the body was read) mean no job exists: the error
  says so and nothing is held.
- Reads of a paid job (status, result) retry through 429 (with or without
  Retry-After), 5xx, unreadable answers and refused connections with `job_retry`,
  which by default never gives up by itself: the job's deadline ends the wait. Each
  retry is announced ("RunComfy busy (HTTP 429); retrying in 20 s; the job is still running").
- No exception raised here has an httpx exception as its cause or context: those hold
  the request, and the request holds the token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .config import DEFAULT_BASE_URL, Credentials
from .errors import (
    InputError,
    OutcomeUnknownError,
    RunComfyError,
    ServiceError,
    error_from_response,
)
from .quiet_polls import quiet_status_polls
from .retry import RetryPolicy, parse_retry_after
from .schema import MAX_BODY_BYTES

SUCCESS_STATES = frozenset({"succeeded", "completed", "success"})
QUEUED_STATES = frozenset({"in_queue", "queued", "pending"})
RUNNING_STATES = frozenset({"in_progress", "running", "processing"})

GATEWAY_STATUSES = frozenset({502, 503, 504})  # a proxy's word that the service itself did not answer

RetryNotice = Callable[[str], None]
RequestBody = Mapping[str, Any] | Sequence[bytes]


@dataclass
class UploadTracker:
    """Whether the whole submit body has been handed to the connection, and what to do just before its last
    piece is: from then until an answer arrives, a job may exist that nobody has been told about."""

    complete: bool = False
    on_last_piece: Callable[[], Awaitable[None]] | None = None  # must not raise


@dataclass(frozen=True)
class Submission:
    request_id: str
    status_url: str | None = None
    result_url: str | None = None
    cancel_url: str | None = None


@dataclass(frozen=True)
class JobStatus:
    request_id: str
    state: str  # normalised: in_queue, in_progress, completed, cancelled, or whatever else the service says
    queue_position: int | None = None


@dataclass(frozen=True)
class JobResult:
    request_id: str
    state: str
    urls: tuple[str, ...] = ()
    error: str | None = None
    cost_usd: float | None = None


@dataclass(frozen=True)
class CancelResult:
    request_id: str
    outcome: str  # "cancelled" or "not_cancellable"
    state: str | None = None


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


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
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


def _lost_submit(action: str, problem: str, body_complete: bool) -> RunComfyError:
    """The error for a submit whose connection failed after it opened."""
    if not body_complete:
        return ServiceError(
            f"{action} failed: the upload broke off before the whole request was sent ({problem}). RunComfy cannot "
            "have created a job from part of a request, so nothing was charged. Check your connection and run again."
        )
    return OutcomeUnknownError(
        f"{action}: the request was sent but the connection failed before RunComfy answered ({problem}). "
        "The job may have been created and charged, so it was not sent again. Look for it in your RunComfy "
        "dashboard before running again, or change the seed to submit anew."
    )


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    read_s: float = 30.0
    submit_read_s: float = 120.0  # the service may take a while to store large data-URI references
    write_s: float = 120.0


class RunComfyClient:
    """One authenticated connection pool to the Model API. Use as `async with RunComfyClient(...)`."""

    def __init__(
        self,
        credentials: Credentials,
        base_url: str = DEFAULT_BASE_URL,
        *,
        retry: RetryPolicy | None = None,
        job_retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        on_retry: RetryNotice | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.job_retry = job_retry or RetryPolicy.until_deadline()
        self.timeouts = timeouts or Timeouts()
        self.on_retry = on_retry
        quiet_status_polls(self.base_url)
        t = self.timeouts
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers={"Authorization": f"Bearer {credentials.token}", "Accept": "application/json"},
            timeout=httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.connect_s),
            follow_redirects=False,
        )

    async def __aenter__(self) -> RunComfyClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- calls -------------------------------------------------------------------------------

    async def submit(self, model_id: str, body: RequestBody, upload: UploadTracker | None = None) -> Submission:
        """POST the job once, with a Content-Length. See the module docstring for what each failure means.

        `body` is the JSON payload as a dict or as byte pieces. `upload.complete` turns True once
        the last byte has been handed to the connection: before that, no job can exist.
        """
        upload = upload or UploadTracker()
        if isinstance(body, Mapping):
            body = [json.dumps(body, separators=(",", ":")).encode("utf-8")]
        pieces = list(body)
        length = sum(len(piece) for piece in pieces)
        if length > MAX_BODY_BYTES:
            raise InputError(
                "images",
                f"the request would be {length / 2**20:.0f} MiB; the limit is {MAX_BODY_BYTES / 2**20:.0f} MiB. "
                "Use fewer or smaller reference images.",
            )
        headers = {"Content-Type": "application/json", "Content-Length": str(length)}

        async def tracked() -> AsyncIterator[bytes]:
            upload.complete = False
            for index, piece in enumerate(pieces):
                if index == len(pieces) - 1 and upload.on_last_piece is not None:
                    await upload.on_last_piece()
                yield piece
            upload.complete = True  # reached only once httpx asked for more after writing the last piece

        action = "Submitting the job"
        t = self.timeouts
        timeout = httpx.Timeout(connect=t.connect_s, read=t.submit_read_s, write=t.write_s, pool=t.connect_s)
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            retry_after: float | None = None
            failure: tuple[str, bool] | None = None  # (what happened, whether the body was complete)
            response: httpx.Response | None = None
            try:
                response = await self._http.post(f"models/{model_id}", content=tracked(), headers=headers, timeout=timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                problem = describe_transport_error(exc)  # the connection never opened: nothing arrived
            except httpx.HTTPError as exc:  # a broken connection, or an answer that could not be read or decoded
                failure = (describe_transport_error(exc), upload.complete)
            if failure is not None:  # raised here, outside the except block, so no httpx exception is attached
                raise _lost_submit(action, *failure)
            if response is not None:
                status = response.status_code
                if status < 400:
                    return self._submission_from(response)
                refusal = error_from_response(status, _json_or_none(response), action=action)
                if status in GATEWAY_STATUSES and refusal.error_code is None:  # a proxy's answer, not RunComfy's
                    raise OutcomeUnknownError(
                        f"{action}: a gateway in front of RunComfy answered HTTP {status} after the whole request was sent, "
                        "so RunComfy may have created the job and charged it. It was not sent again. Look for it in your "
                        "RunComfy dashboard before running again, or change the seed to submit anew."
                    )
                if status != 429:
                    raise refusal
                problem = "HTTP 429 (rate limited)"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = self.retry.delay(attempt, retry_after)
            if self.retry.gives_up(attempt, waited, delay):
                raise ServiceError(
                    f"{action} failed: RunComfy could not be reached or refused it {attempt} times ({problem}). "
                    "No job was created and nothing was charged. Check your connection and run again."
                )
            self._notify(f"{action}: {problem}; trying again in {delay:.0f} s (no job was created, nothing is charged).")
            await asyncio.sleep(delay)
            waited += delay

    def _submission_from(self, response: httpx.Response) -> Submission:
        data = _json_or_none(response)
        request_id = data.get("request_id") if isinstance(data, Mapping) else None
        if not isinstance(request_id, str) or not request_id:
            raise OutcomeUnknownError(
                "Submitting the job: RunComfy accepted it but its answer had no readable request id. The job may "
                "be running and charged; look for it in your RunComfy dashboard before running again."
            )
        return Submission(
            request_id=request_id,
            status_url=data.get("status_url"),
            result_url=data.get("result_url"),
            cancel_url=data.get("cancel_url"),
        )

    async def status(self, request_id: str) -> JobStatus:
        data = await self._read(
            "GET", f"requests/{request_id}/status", action="Checking the job status", request_id=request_id, retry=self.job_retry
        )
        return JobStatus(
            request_id=request_id,
            state=normalise_state(data.get("status")),
            queue_position=_int_or_none(data.get("queue_position")),
        )

    async def result(self, request_id: str, *, include_cost: bool = True) -> JobResult:
        params = {"include_cost": "true"} if include_cost else None
        data = await self._read(
            "GET",
            f"requests/{request_id}/result",
            action="Fetching the job result",
            request_id=request_id,
            params=params,
            retry=self.job_retry,
        )
        error = data.get("error") or data.get("error_message")
        if isinstance(error, Mapping):
            error = error.get("message") or json.dumps(error)[:300]
        return JobResult(
            request_id=request_id,
            state=normalise_state(data.get("status")),
            urls=output_urls(data.get("output")),
            error=str(error) if error else None,
            cost_usd=_float_or_none(data.get("cost")),
        )

    async def cancel(self, request_id: str) -> CancelResult:
        # Cancelling twice is harmless, so this call retries like a read.
        data = await self._read("POST", f"requests/{request_id}/cancel", action="Cancelling the job", request_id=request_id)
        return CancelResult(
            request_id=request_id,
            outcome=str(data.get("outcome") or "").lower(),
            state=normalise_state(data.get("status")) or None,
        )

    async def model_info(self, model_id: str) -> Mapping[str, Any]:
        """The catalog entry of a model (price, schema)."""
        return await self._read("GET", f"models/{model_id}", action="Reading the model catalog")

    # --- plumbing ----------------------------------------------------------------------------

    def _notify(self, message: str) -> None:
        if self.on_retry is not None:
            self.on_retry(message)

    async def _read(
        self,
        method: str,
        path: str,
        *,
        action: str,
        request_id: str | None = None,
        params: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> Mapping[str, Any]:
        """A call that is safe to repeat: retried on 429, 5xx, unreadable JSON and network trouble."""
        policy = retry or self.retry
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            last_error: RunComfyError | None = None
            retry_after: float | None = None
            response: httpx.Response | None = None
            try:
                response = await self._http.request(method, path, params=params)
            except httpx.HTTPError as exc:
                problem, busy = describe_transport_error(exc), "unreachable"
            if response is not None:
                status = response.status_code
                if status < 400:
                    data = _json_or_none(response)
                    if isinstance(data, Mapping):
                        return data
                    problem, busy = "an unreadable answer", "not answering properly"
                elif status == 429 or status >= 500 or status == 404:
                    last_error = error_from_response(status, _json_or_none(response), action=action, request_id=request_id)
                    if status == 404 and last_error.error_code == "404001":
                        raise last_error  # RunComfy's own word: the request is gone
                    # Any other 404 is a proxy or an edge in trouble, not the request being gone.
                    problem, busy = f"HTTP {status}", "busy" if status == 429 else "unavailable"
                    if status == 429:
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                else:
                    raise error_from_response(status, _json_or_none(response), action=action, request_id=request_id)
            delay = policy.delay(attempt, retry_after)
            if policy.gives_up(attempt, waited, delay):
                if last_error is not None:
                    raise type(last_error)(
                        f"{last_error} (gave up after {attempt} tries)",
                        http_status=last_error.http_status,
                        error_code=last_error.error_code,
                        request_id=request_id,
                    )
                raise ServiceError(f"{action} failed: lost contact with RunComfy after {attempt} tries ({problem}).", request_id=request_id)
            still_running = "; the job is still running" if request_id else ""
            self._notify(f"RunComfy {busy} ({problem}); retrying in {delay:.0f} s{still_running}")
            await asyncio.sleep(delay)
            waited += delay
