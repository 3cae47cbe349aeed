"""Async HTTP client for the RunComfy Model API: submit, status, result, cancel, and the catalog price.

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
- One send path (`_call`) serves every call; `idempotent=False` (the submit) is what makes a
  lost answer "may have been charged" instead of a retry. One `RetryPolicy` bounds every retry
  loop by attempts and by time; `Retry-After` is a lower bound on the next wait, never
  permission to hammer (`Retry-After: 0` still backs off), and no wait exceeds ~30 s.
- The catalog price is looked up in the background and cached per service; a failed or
  slow lookup never blocks or fails a run.
- No exception raised here has an httpx exception as its cause or context: those hold
  the request, and the request holds the token.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .config import DEFAULT_BASE_URL, Credentials
from .errors import InputError, OutcomeUnknownError, RunComfyError, ServiceError, error_from_response
from .job import CancelResult, Job, JobResult, JobStatus, UploadTracker
from .schema import MAX_BODY_BYTES, MODEL_ID, EditSequentialRequest

QUEUED_STATES = frozenset({"in_queue", "queued", "pending"})
RUNNING_STATES = frozenset({"in_progress", "running", "processing"})
GATEWAY_STATUSES = frozenset({502, 503, 504})  # a proxy's word that the service itself did not answer
PRICE_TTL_S = 3600.0
PRICE_LOOKUP_TIMEOUT_S = 10.0
PRICE_RETRY_AFTER_FAILURE_S = 60.0

STATUS_INTERVAL_S = 0.22  # all status polls of a process to one service together: under five a second

RetryNotice = Callable[[str], None]
log = logging.getLogger("runcomfy.seedream")


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
class Timeouts:
    connect_s: float = 10.0
    read_s: float = 30.0
    submit_read_s: float = 120.0  # the service may take a while to store large data-URI references
    write_s: float = 120.0


class SharedPace:
    """What every run of this process shares towards one service: the pace of status polls (one every
    `status_interval_s` at most, however many jobs are in flight) and the backoff after a 429 on a submit
    (one for the whole batch, not one per item). One per event loop and service address."""

    def __init__(self) -> None:
        self._last_status = float("-inf")
        self._status_turns = asyncio.Lock()
        self._submits_not_before = 0.0

    async def status_turn(self, interval_s: float) -> None:
        """Wait until `interval_s` has passed since the last status poll was actually sent, one caller at a time:
        paced from the real send time, so a late wake-up never shortens the next gap."""
        loop = asyncio.get_running_loop()
        async with self._status_turns:
            wait = self._last_status + interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_status = loop.time()

    async def submit_turn(self) -> None:
        loop = asyncio.get_running_loop()
        while (wait := self._submits_not_before - loop.time()) > 0:
            await asyncio.sleep(wait)

    def back_off_submits(self, seconds: float) -> None:
        self._submits_not_before = max(self._submits_not_before, asyncio.get_running_loop().time() + seconds)


_paces: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, SharedPace]] = weakref.WeakKeyDictionary()
_upload_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Semaphore]] = weakref.WeakKeyDictionary()


def shared_pace(base_url: str) -> SharedPace:
    return _paces.setdefault(asyncio.get_running_loop(), {}).setdefault(base_url.rstrip("/"), SharedPace())


def upload_slots(count: int) -> asyncio.Semaphore:
    """The process's bound on uploads (with their encodes and submits) in flight at once."""
    return _upload_slots.setdefault(asyncio.get_running_loop(), {}).setdefault(count, asyncio.Semaphore(count))


@dataclass(frozen=True)
class Price:
    usd_per_image: float

    def estimate(self, images: int) -> str:
        return f"Estimated cost: up to ${self.usd_per_image * images:.2f} ({images} x ${self.usd_per_image:.3f} per image)"


_prices: dict[tuple[str, str], tuple[float, Price]] = {}  # (base URL, model) -> (fetched at, price); never keyed by token
_price_failures: dict[tuple[str, str], float] = {}  # (base URL, model) -> when a lookup last failed
_price_lookups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Future]] = weakref.WeakKeyDictionary()


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


def _number_or_none(value: Any, kind: type) -> Any:
    try:
        return kind(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
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


def _path_part(request_id: str) -> str:
    """A request id as one path segment, whatever it holds (a "/" or ".." cannot reach another endpoint)."""
    return quote(request_id, safe="").replace(".", "%2E")


def _may_be_charged(action: str, what_happened: str) -> OutcomeUnknownError:
    return OutcomeUnknownError(
        f"{action}: {what_happened}. RunComfy may have created the job, and it may have been charged; it was not sent "
        "again. Look for it in your RunComfy dashboard before running again, or change the seed to submit anew."
    )


class RunComfyClient:
    """One authenticated connection pool to the Model API. Use as `async with RunComfyClient(...)`.

    `retry` bounds the submit's retries (only when nothing can have arrived) and `job_retry`
    the reads of a job that exists; `on_retry` hears each retry announced.
    """

    def __init__(
        self,
        credentials: Credentials,
        base_url: str = DEFAULT_BASE_URL,
        *,
        retry: RetryPolicy | None = None,
        job_retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        on_retry: RetryNotice | None = None,
        status_interval_s: float = STATUS_INTERVAL_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.status_interval_s = status_interval_s
        self.retry = retry or RetryPolicy()
        self.job_retry = job_retry or RetryPolicy.until_deadline()
        self.timeouts = timeouts or Timeouts()
        self.on_retry = on_retry
        t = self.timeouts
        self._token = credentials.token  # only to keep it out of what the service echoes back
        self._owns_pool = True
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
        """Close the connection pool; a `sharing_pool` view leaves it to the client that made it."""
        if self._owns_pool:
            await self._http.aclose()

    def sharing_pool(self, *, on_retry: RetryNotice | None) -> RunComfyClient:
        """A client on this one's connection pool that announces its retries elsewhere (one run of a batch)."""
        view = object.__new__(RunComfyClient)
        view.__dict__.update(self.__dict__)
        view.on_retry = on_retry
        view._owns_pool = False
        return view

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
            action="Submitting the job",
            idempotent=False,
            body=tracked,
            headers={"Content-Type": "application/json", "Content-Length": str(length)},
            upload=upload,
        )
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise OutcomeUnknownError(
                "Submitting the job: RunComfy accepted it but its answer had no readable request id. The job may "
                "be running and charged; look for it in your RunComfy dashboard before running again."
            )
        return Job(self, request_id, just_submitted=True)

    async def status(self, request_id: str) -> JobStatus:
        data = await self._call("GET", f"requests/{_path_part(request_id)}/status", action="Checking the job status", request_id=request_id)
        return JobStatus(request_id, normalise_state(data.get("status")), _number_or_none(data.get("queue_position"), int))

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
            cost_usd=_number_or_none(data.get("cost"), float),
        )

    async def cancel(self, request_id: str) -> CancelResult:
        # Cancelling twice is harmless, so this call retries like a read.
        data = await self._call("POST", f"requests/{_path_part(request_id)}/cancel", action="Cancelling the job", request_id=request_id)
        return CancelResult(request_id, str(data.get("outcome") or "").lower(), normalise_state(data.get("status")) or None)

    async def model_info(self, *, announce: bool = True) -> Mapping[str, Any]:
        """The model's catalog entry (price, schema); a refused token is an `AuthenticationError`."""
        return await self._call("GET", f"models/{MODEL_ID}", action="Reading the model catalog", announce=announce)

    async def price(self) -> Price | None:
        """The model's catalog price per image, cached for an hour per service; None when it cannot be had."""
        key = (self.base_url, MODEL_ID)
        cached = _prices.get(key)
        if cached is not None and time.monotonic() - cached[0] < PRICE_TTL_S:
            return cached[1]
        failed = _price_failures.get(key)
        if failed is not None and time.monotonic() - failed < PRICE_RETRY_AFTER_FAILURE_S:
            return None  # many runs at once must not each knock on a catalog that is failing
        in_flight = _price_lookups.setdefault(asyncio.get_running_loop(), {})
        lookup = in_flight.get(key)
        if lookup is None or lookup.done():  # one lookup at a time per service: the runs of a batch share it
            lookup = in_flight[key] = asyncio.ensure_future(self._look_up_price(key))
        return await asyncio.shield(lookup)

    async def _look_up_price(self, key: tuple[str, str]) -> Price | None:
        try:
            info = await asyncio.wait_for(self.model_info(announce=False), PRICE_LOOKUP_TIMEOUT_S)
            value = info["base_price_usd"]
            if isinstance(value, bool) or not (0 <= float(value) < 1000):  # NaN, infinite, negative: no estimate
                return None
            price = Price(float(value))
        except (RunComfyError, asyncio.TimeoutError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            log.debug("price lookup failed: %s", type(exc).__name__)  # RuntimeError: its client was closed meanwhile
            _price_failures[key] = time.monotonic()
            return None
        _prices[key] = (time.monotonic(), price)
        return price

    # --- the one send path -------------------------------------------------------------------

    def _notify(self, message: str) -> None:
        if self.on_retry is not None:
            self.on_retry(message)

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
        """Send one call and return its JSON object, retrying what may be retried.

        Every call is retried when the connection never opened and on 429. An idempotent call is also
        retried on 5xx, a bare 404, a broken connection and an unreadable answer, with `job_retry` when it
        reads a job (`request_id`). A non-idempotent call (the submit) is never sent twice once its body
        may have arrived: a broken connection after the whole body, an unreadable answer or a gateway's
        502/503/504 is `OutcomeUnknownError`; any other answer is the error it says.
        """
        policy = self.job_retry if request_id else self.retry
        pace = shared_pace(self.base_url)
        t = self.timeouts
        timeout = None if idempotent else httpx.Timeout(connect=t.connect_s, read=t.submit_read_s, write=t.write_s, pool=t.connect_s)
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            retry_after: float | None = None
            rate_limited = False
            last_error: ServiceError | None = None
            lost: str | None = None  # a non-idempotent call whose connection failed after it opened
            response: httpx.Response | None = None
            options: dict[str, Any] = {"params": params, "headers": headers}
            if body is not None:
                options["content"] = body()
            if timeout is not None:
                options["timeout"] = timeout
            if not idempotent:
                await pace.submit_turn()
            elif path.endswith("/status"):
                await pace.status_turn(self.status_interval_s)
            try:
                response = await self._http.request(method, path, **options)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                problem, busy = describe_transport_error(exc), "unreachable"  # never opened: nothing arrived
            except httpx.HTTPError as exc:  # broken, timed out, or an answer that could not be read or decoded
                problem, busy = describe_transport_error(exc), "unreachable"
                if not idempotent:
                    lost = problem
            if lost is not None:  # raised here, outside the except block, so no httpx exception is attached
                raise self._lost_submit(action, lost, upload is not None and upload.complete)
            if response is not None:
                status = response.status_code
                if not idempotent and 300 <= status < 400:  # a definite answer from something that is not the API
                    where = response.headers.get("Location", "")[:120]
                    raise ServiceError(
                        f"{action} failed: the service address answered with a redirect (HTTP {status}"
                        + (f" to {where}" if where else "")
                        + "), as a login page or a proxy does. No job was created and nothing was charged. Check "
                        "RUNCOMFY_MODEL_API_BASE and your network, then run again."
                    )
                if status < 400:
                    data = _json_or_none(response)
                    if isinstance(data, Mapping):
                        return data
                    if not idempotent:  # accepted, but what was accepted cannot be read: the caller says so
                        return {}
                    problem, busy = "an unreadable answer", "not answering properly"
                else:
                    last_error = error_from_response(
                        status, _json_or_none(response), action=action, request_id=request_id, redact=self._token
                    )
                    if not idempotent and status in GATEWAY_STATUSES and last_error.error_code is None:
                        raise _may_be_charged(
                            action, f"a gateway in front of RunComfy answered HTTP {status} after the whole request was sent"
                        )
                    retryable = status == 429 or (
                        idempotent and (status >= 500 or status in (408, 425) or (status == 404 and last_error.error_code != "404001"))
                    )
                    if not retryable:  # RunComfy's own word (a bare 404 is a proxy or an edge in trouble)
                        raise last_error
                    problem, busy = f"HTTP {status}", "busy" if status == 429 else "unavailable"
                    if status == 429:
                        rate_limited = True
                        problem += " (rate limited)" if not idempotent else ""
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = policy.delay(attempt, retry_after)
            if policy.gives_up(attempt, waited, delay):
                raise self._gave_up(action, attempt, problem, last_error, idempotent, request_id)
            if not idempotent and rate_limited:
                pace.back_off_submits(delay)  # every submit of this process waits: one backoff for a whole batch
            if not announce:
                pass
            elif not idempotent:
                self._notify(f"{action}: {problem}; trying again in {delay:.0f} s (no job was created, nothing is charged).")
            else:
                still_running = "; the job is still running" if request_id else ""
                self._notify(f"RunComfy {busy} ({problem}); retrying in {delay:.0f} s{still_running}")
            await asyncio.sleep(delay)
            waited += delay

    @staticmethod
    def _lost_submit(action: str, problem: str, body_complete: bool) -> RunComfyError:
        if not body_complete:
            return ServiceError(
                f"{action} failed: the upload broke off before the whole request was sent ({problem}). RunComfy cannot "
                "have created a job from part of a request, so nothing was charged. Check your connection and run again."
            )
        return _may_be_charged(action, f"the request was sent but the connection failed before RunComfy answered ({problem})")

    @staticmethod
    def _gave_up(
        action: str, attempt: int, problem: str, last_error: ServiceError | None, idempotent: bool, request_id: str | None
    ) -> RunComfyError:
        if not idempotent:
            return ServiceError(
                f"{action} failed: RunComfy could not be reached or turned it away ({problem}; {attempt} tries). "
                "No job was created and nothing was charged. Check your connection and run again."
            )
        if last_error is not None:
            return type(last_error)(
                f"{last_error} (gave up after {attempt} tries)",
                http_status=last_error.http_status,
                error_code=last_error.error_code,
                request_id=request_id,
            )
        return ServiceError(f"{action} failed: lost contact with RunComfy after {attempt} tries ({problem}).", request_id=request_id)
