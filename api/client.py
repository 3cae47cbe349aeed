"""Async HTTP client for the RunComfy Model API: submit, status, result, cancel.

Read-only calls retry on 429 (honouring Retry-After), 5xx, unreadable answers
and connection trouble, within a budget. The submit POST costs money and has no
idempotency key, so it is retried only when it provably never reached the
service (connection refused, DNS failure) or was refused with 429.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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

RetryNotice = Callable[[str], None]
RequestBody = Mapping[str, Any] | Sequence[bytes] | Callable[[], AsyncIterator[bytes]]


@dataclass
class UploadTracker:
    """Whether the whole submit body has been handed to the connection."""

    complete: bool = False


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
    except ValueError:
        return None


def describe_transport_error(exc: httpx.TransportError) -> str:
    """A short, token-free description of a network failure."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({kind})"
    return f"connection problem ({kind})"


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
        timeouts: Timeouts | None = None,
        on_retry: RetryNotice | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
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
        """POST the job once. Raises OutcomeUnknownError when it may have arrived but no answer came.

        `body` is the JSON payload as a dict, as byte pieces (sent with an exact Content-Length),
        or a function returning an async iterator of pieces, streamed while they are produced
        (chunked). `upload.complete` turns True once the last byte has been handed over: before
        that, abandoning the request cannot create a job.
        """
        upload = upload or UploadTracker()
        if isinstance(body, Mapping):
            body = [json.dumps(body, separators=(",", ":")).encode("utf-8")]
        if callable(body):
            make_stream, headers = body, {"Content-Type": "application/json"}
        else:
            pieces = list(body)
            length = sum(len(piece) for piece in pieces)
            if length > MAX_BODY_BYTES:
                raise InputError(
                    "images",
                    f"the request would be {length / 2**20:.0f} MiB; the limit is {MAX_BODY_BYTES / 2**20:.0f} MiB. "
                    "Use fewer or smaller reference images.",
                )

            async def make_stream() -> AsyncIterator[bytes]:
                for piece in pieces:
                    yield piece

            headers = {"Content-Type": "application/json", "Content-Length": str(length)}

        async def tracked() -> AsyncIterator[bytes]:
            upload.complete = False
            async for piece in make_stream():
                yield piece
            upload.complete = True

        action = "Submitting the job"
        t = self.timeouts
        timeout = httpx.Timeout(connect=t.connect_s, read=t.submit_read_s, write=t.write_s, pool=t.connect_s)
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            try:
                response = await self._http.post(f"models/{model_id}", content=tracked(), headers=headers, timeout=timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # The connection never opened: nothing reached the service, so trying again is safe.
                problem, delay = describe_transport_error(exc), None
            except httpx.TransportError as exc:
                raise OutcomeUnknownError(
                    f"{action}: the request was sent but the connection failed before RunComfy answered "
                    f"({describe_transport_error(exc)}). The job may have been created and charged, so it was "
                    "not sent again. Look for it in your RunComfy dashboard before running again."
                ) from None
            else:
                if response.status_code == 411 and "Content-Length" not in headers:
                    # The service wants the length up front: it refused the request, so send it again measured.
                    pieces = [piece async for piece in make_stream()]
                    return await self.submit(model_id, pieces, upload)
                if response.status_code == 429:
                    problem, delay = "HTTP 429 (rate limited)", parse_retry_after(response.headers.get("Retry-After"))
                elif response.status_code >= 400:
                    raise error_from_response(response.status_code, _json_or_none(response), action=action)
                else:
                    return self._submission_from(response)
            delay = self.retry.backoff(attempt) if delay is None else delay
            if attempt >= self.retry.max_attempts or waited + delay > self.retry.budget_s:
                raise ServiceError(
                    f"{action} failed: RunComfy could not be reached after {attempt} tries ({problem}). "
                    "Nothing was charged. Check your connection and run again."
                )
            self._notify(f"{action}: {problem}; trying again in {delay:.0f} s (nothing was sent yet).")
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
        data = await self._read("GET", f"requests/{request_id}/status", action="Checking the job status", request_id=request_id)
        return JobStatus(
            request_id=request_id,
            state=normalise_state(data.get("status")),
            queue_position=_int_or_none(data.get("queue_position")),
        )

    async def result(self, request_id: str, *, include_cost: bool = True) -> JobResult:
        params = {"include_cost": "true"} if include_cost else None
        data = await self._read(
            "GET", f"requests/{request_id}/result", action="Fetching the job result", request_id=request_id, params=params
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
    ) -> Mapping[str, Any]:
        """A call that is safe to repeat: retried on 429, 5xx, unreadable JSON and network trouble."""
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            last_error: RunComfyError | None = None
            delay: float | None = None
            try:
                response = await self._http.request(method, path, params=params)
            except httpx.TransportError as exc:
                problem = describe_transport_error(exc)
            else:
                status = response.status_code
                if status < 400:
                    data = _json_or_none(response)
                    if isinstance(data, Mapping):
                        return data
                    problem = "an unreadable answer (not a JSON object)"
                elif status == 429 or status >= 500:
                    problem = f"HTTP {status}"
                    last_error = error_from_response(status, _json_or_none(response), action=action, request_id=request_id)
                    if status == 429:
                        delay = parse_retry_after(response.headers.get("Retry-After"))
                else:
                    raise error_from_response(status, _json_or_none(response), action=action, request_id=request_id)
            delay = self.retry.backoff(attempt) if delay is None else delay
            if attempt >= self.retry.max_attempts or waited + delay > self.retry.budget_s:
                if last_error is not None:
                    last_error.args = (f"{last_error.args[0]} (gave up after {attempt} tries)",)
                    raise last_error
                raise ServiceError(
                    f"{action} failed: lost contact with RunComfy after {attempt} tries ({problem}).",
                    request_id=request_id,
                )
            self._notify(f"{action}: {problem}; trying again in {delay:.1f} s.")
            await asyncio.sleep(delay)
            waited += delay

    async def run(self, model_id: str, body: RequestBody, **options: Any) -> JobResult:
        """Submit once and poll to completion; see `job.run_job` for the options (deadline, events, Stop)."""
        from .job import run_job  # job builds on this module

        return await run_job(self, model_id, body, **options)
