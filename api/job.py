"""A RunComfy job from its request id to its result: a handle, in the manner of fal_client's.

    job = await client.submit(request)            # or: job = Job.resume(client, request_id)
    async for event in job.events(): ...           # queued / generating, until the result is known
    result = await job.result()                    # URLs and cost; JobFailedError / JobCancelledError otherwise
    await job.cancel()                             # RunComfy cancels a job only while it is queued
    result = await job.wait(deadline_s=…, should_stop=…)   # all of the above, with Stop and a deadline; its events
                                                           # are handed up to whoever listens (`events`)

Invariants this module owns:

- Stop is checked every 0.2 s in every phase (`stop`). During the upload an incomplete body is
  abandoned (no job can exist); after it, a queued job is cancelled remotely and a running
  one cannot be, and the user is told it may be charged. The check is expected to latch
  (`stop.Latch`): a Stop seen while RunComfy answered the submit is still seen by `wait`.
- Once the job exists, only the job itself (done, failed, cancelled), Stop or the job's
  deadline ends the wait: status and result reads retry through outages (see `client`).
  A job still queued at the deadline is cancelled, so it costs nothing.
- Polling is quick at first, steady while the job changes and slower once it has been quiet
  a while; it stays under two status requests a second and is jittered, so many clients do
  not poll in lockstep.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .errors import (
    DeadlineExceededError,
    InputError,
    JobCancelledError,
    JobFailedError,
    OutcomeUnknownError,
    RequestNotFoundError,
    RunComfyError,
    StopRequested,
)
from .events import Event, Phase, StopCheck, Waited, cancel_and_wait, generating_share, hand_up, never_stop, shorten, wait_watching

if TYPE_CHECKING:
    from .schema import EditSequentialRequest

DEFAULT_DEADLINE_S = 30 * 60  # RunComfy's own nodes wait this long for a set of 15
CANCEL_WAIT_S = 15.0
SUCCESS_STATES = frozenset({"succeeded", "completed", "success"})


MAX_REQUEST_ID_CHARS = 200  # RunComfy documents no format; its ids are UUIDs, far shorter
_WHERE_IDS_ARE = "Paste the id of the job to collect: the request_id output of the Seedream node, or the id in your RunComfy dashboard."


def check_request_id(value: object, *, field: str = "request_id") -> str:
    """A request id as typed or connected, trimmed. RunComfy documents no format, so only what cannot be one is
    refused (before anything is sent): nothing, several words, a link or path, control characters, a runaway paste."""
    if not isinstance(value, str):
        raise InputError(field, f"must be text (a request id), not {type(value).__name__}. {_WHERE_IDS_ARE}")
    text = value.strip()
    if not text:
        raise InputError(field, f"is empty. {_WHERE_IDS_ARE}")
    shown = repr(shorten(text, 60))
    if len(text) > MAX_REQUEST_ID_CHARS:
        problem = f"is {len(text)} characters long"
    elif any(char.isspace() for char in text):
        problem = "has a space or line break in it (one id per node, or connect a list)"
    elif any(not char.isprintable() for char in text):
        problem = "has a control character in it"
    elif "/" in text or "\\" in text or not text.strip("."):
        problem = "looks like a link or a path"
    else:
        return text
    raise InputError(field, f"{shown} is not a RunComfy request id: it {problem}. {_WHERE_IDS_ARE}")


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
    outcome: str  # what RunComfy said: "cancelled", "not_cancellable", …
    state: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.outcome == "cancelled" or self.state == "cancelled"


JobEvent = Event  # what a job has to say: queued (with its position), generating, fetching the result


class JobService(Protocol):
    """The calls a job needs; `client.RunComfyClient` provides them."""

    async def status(self, request_id: str) -> JobStatus: ...
    async def result(self, request_id: str) -> JobResult: ...
    async def cancel(self, request_id: str) -> CancelResult: ...


@dataclass
class PollSchedule:
    """Delays between status polls: `first_s` after a submit, `steady_s` while the job changes, growing
    to `ceiling_s` after `patience_s` without change. A finished job is noticed about a quarter to half
    a second later on average."""

    first_s: float = 0.5
    steady_s: float = 0.65
    ceiling_s: float = 1.0
    patience_s: float = 30.0
    growth: float = 1.1
    jitter: float = 0.2
    _current: float = field(init=False, default=0.0)
    _quiet_for: float = field(init=False, default=0.0)
    _first: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self._current = self.steady_s

    def next_delay(self, *, progressed: bool) -> float:
        """Delay before the next poll; `progressed` means the last answer differed from the one before."""
        if self._first:
            self._first = False
            return self.first_s
        if progressed:
            self._current, self._quiet_for = self.steady_s, 0.0
        elif self._quiet_for >= self.patience_s:
            self._current = min(self.ceiling_s, self._current * self.growth)
        delay = self._current * random.uniform(1 - self.jitter, 1 + self.jitter)
        self._quiet_for += delay
        return delay


class Job:
    """A request RunComfy has accepted (or may have: see `resume`)."""

    def __init__(self, service: JobService, request_id: str, *, just_submitted: bool = False) -> None:
        if not isinstance(request_id, str) or not request_id:
            raise InputError("request_id", f"{request_id!r} is not a RunComfy request id; give the id RunComfy answered with.")
        self.service = service
        self.request_id = request_id
        self.state: str | None = None  # the last state RunComfy reported; None before the first answer
        self._just_submitted = just_submitted
        self._running_since: float | None = None
        self._result: JobResult | None = None

    @classmethod
    def resume(cls, service: JobService, request_id: str) -> Job:
        """The handle of a request made earlier, by this process or another."""
        return cls(service, request_id)

    async def status(self) -> JobStatus:
        status = await self.service.status(self.request_id)
        self.state = status.state
        return status

    async def cancel(self) -> CancelResult:
        return await self.service.cancel(self.request_id)

    async def events(self, poll_schedule: PollSchedule | None = None) -> AsyncIterator[JobEvent]:
        """Poll until the job has ended. The iteration ends once the result is known (then `result()` returns
        it at once); a failed or cancelled job raises `JobFailedError` / `JobCancelledError`."""
        schedule = poll_schedule or PollSchedule()
        if self._result is not None:
            return
        if self._just_submitted:  # it cannot be done yet: the first check waits a moment
            self._just_submitted = False
            await asyncio.sleep(schedule.next_delay(progressed=True))
        started = time.monotonic()
        last_seen: tuple[str, int | None] | None = None
        while True:
            status = await self.status()
            seen = (status.state, status.queue_position)
            progressed, last_seen = seen != last_seen, seen
            now = time.monotonic()
            if status.state == "in_queue":
                where = f" (position {status.queue_position})" if status.queue_position is not None else ""
                yield Event(Phase.QUEUED, f"Queued at RunComfy{where}", self.request_id, status.queue_position, now - started, 0.4)
            elif status.state == "in_progress":
                self._running_since = self._running_since or now
                elapsed = now - self._running_since
                yield Event(Phase.GENERATING, f"Generating… {elapsed:.0f} s", self.request_id, None, elapsed, generating_share(elapsed))
            elif status.state == "cancelled":
                raise JobCancelledError(
                    "The job was cancelled at RunComfy (not by this node). Run the node again to submit a new job.",
                    request_id=self.request_id,
                )
            else:
                yield Event(Phase.GENERATING, "Fetching the result…", self.request_id, within=1.0)
                if await self._fetch_result():
                    return
            await asyncio.sleep(schedule.next_delay(progressed=progressed))

    async def _fetch_result(self) -> bool:
        """True once the result is in; raises when the job failed or was cancelled."""
        result = await self.service.result(self.request_id)
        self.state = result.state
        if result.state in SUCCESS_STATES:
            if not result.urls:
                raise JobFailedError(
                    "RunComfy reports the job finished but returned no images. Try a clearer prompt that states how many images to make.",
                    request_id=self.request_id,
                    reason="it finished but returned no images",
                )
            self._result = result
            return True
        if result.state == "failed":
            raise JobFailedError(
                f"RunComfy reports the generation failed: {(result.error or 'no reason given').rstrip('. ')}. "
                "Adjust the prompt or references and run again.",
                request_id=self.request_id,
                reason=result.error or "no reason given",
            )
        if result.state == "cancelled":
            raise JobCancelledError("The job was cancelled at RunComfy.", request_id=self.request_id)
        return False  # status and result can disagree for a moment: keep polling

    async def result(self, poll_schedule: PollSchedule | None = None) -> JobResult:
        """Wait for the result, however long it takes (see `wait` for Stop and a deadline)."""
        async for _ in self.events(poll_schedule):
            pass
        assert self._result is not None
        return self._result

    async def wait(
        self,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        should_stop: StopCheck = never_stop,
        poll_schedule: PollSchedule | None = None,
        leave_running: bool = False,
    ) -> JobResult:
        """The result, unless Stop is pressed (`StopRequested`) or `deadline_s` passes (`DeadlineExceededError`);
        either way a job still queued is cancelled, so it costs nothing. With `leave_running` (a job somebody
        else submitted) nothing is ever cancelled: the wait ends and the job goes on."""
        deadline = asyncio.get_running_loop().time() + deadline_s
        stop = should_stop

        async def follow() -> JobResult:
            async for event in self.events(poll_schedule):
                hand_up(event)
            assert self._result is not None
            return self._result

        task = asyncio.ensure_future(follow())
        try:
            waited = await wait_watching(task, stop, deadline=deadline)
        except asyncio.CancelledError:  # the caller is going away (ComfyUI ending the prompt): a queued job goes too
            await cancel_and_wait(task)
            if self.state in (None, "in_queue") and not leave_running:
                await self._cancel_outcome()
            raise
        except BaseException:
            await cancel_and_wait(task)
            raise
        if waited is Waited.DONE:
            return task.result()
        await cancel_and_wait(task)
        if leave_running:
            raise self._left_running(stopped=waited is Waited.STOP, deadline_s=deadline_s)
        if waited is Waited.STOP:
            raise await self._stopped()
        raise await self._deadline_passed(deadline_s)

    def _left_running(self, *, stopped: bool, deadline_s: float) -> RunComfyError:
        """The wait for a job somebody else submitted ended; the job was not cancelled and goes on."""
        request_id = self.request_id
        again = f"request {request_id} goes on at RunComfy; run this node again to collect it."
        if stopped:
            return StopRequested(f"Stopped waiting; {again}", request_id=request_id)
        return DeadlineExceededError(
            f"Request {request_id} did not finish within {_minutes(deadline_s)}: stopped waiting; {again}", request_id=request_id
        )

    async def _cancel_outcome(self) -> tuple[bool | None, str]:
        """(True: cancelled, False: RunComfy refused, None: unknown; what happened)."""
        try:
            answer = await asyncio.wait_for(self.cancel(), CANCEL_WAIT_S)
        except asyncio.TimeoutError:
            return None, "RunComfy did not answer the cancel request in time"
        except RequestNotFoundError:
            self.state = "gone"
            return False, ""
        except RunComfyError as exc:
            return None, f"the cancel request failed: {exc}"
        if answer.cancelled:
            self.state = "cancelled"
            return True, ""
        if answer.outcome == "not_cancellable":
            return False, ""
        return None, f"RunComfy answered {answer.outcome or 'nothing clear'}"

    async def cancel_queued(self) -> tuple[bool | None, str]:
        """Cancel the job while it is queued: (True: cancelled, False: it had started, None: unconfirmed) and what
        that means, in the words the node and the jobs panel both use."""
        cancelled, detail = await self._cancel_outcome()
        if cancelled:
            return True, f"Queued request {self.request_id} was cancelled at RunComfy before it started generating."
        if self.state == "gone":
            return False, f"RunComfy no longer knows request {self.request_id}: nothing is left to cancel, and it is not charged now."
        if cancelled is False:
            return False, (
                f"Request {self.request_id} had already started, so RunComfy could not cancel it; it will finish and may still be charged."
            )
        return None, f"Cancelling request {self.request_id} is unconfirmed ({detail}); it may still run and be charged."

    async def _stopped(self) -> StopRequested:
        request_id = self.request_id
        if self.state not in (None, "in_queue"):
            return StopRequested(
                f"Stopped. Request {request_id} was already generating; RunComfy cannot cancel a running job, "
                "so it will finish and may still be charged.",
                request_id=request_id,
            )
        hand_up(Event(None, f"Stop pressed: cancelling queued request {request_id}…", request_id))
        cancelled, said = await self.cancel_queued()
        message = f"Stopped. {said}" if cancelled is not None else f"Stopped, but {said[0].lower()}{said[1:]}"
        hand_up(Event(None, message, request_id))
        return StopRequested(message, request_id=request_id, cancelled=bool(cancelled))

    async def _deadline_passed(self, deadline_s: float) -> DeadlineExceededError:
        minutes = _minutes(deadline_s)
        if self.state in (None, "in_queue") and (await self._cancel_outcome())[0]:
            return DeadlineExceededError(
                f"Request {self.request_id} was still queued after {minutes}, so it was cancelled before it started generating. "
                "RunComfy is busy: run again later.",
                request_id=self.request_id,
                cancelled=True,
            )
        return DeadlineExceededError(
            f"Request {self.request_id} did not finish within {minutes}; the node stopped waiting. It may still finish and be charged.",
            request_id=self.request_id,
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Submitter(Protocol):
    async def submit(self, request: EditSequentialRequest, *, upload: UploadTracker | None = None) -> Job: ...


@dataclass
class UploadTracker:
    """Whether the whole submit body has been handed to the connection, and what to do just before its last
    piece is: from then until an answer arrives, a job may exist that nobody has been told about."""

    complete: bool = False
    on_last_piece: Callable[[], Awaitable[None]] | None = None  # must not raise


async def submit_watching(
    client: Submitter,
    request: EditSequentialRequest,
    *,
    should_stop: StopCheck = never_stop,
    upload: UploadTracker | None = None,
    message: str = "Submitting the job to RunComfy…",
) -> Job:
    """Submit once, watching Stop. Stop before the whole body is sent abandons the upload (no job can exist:
    `StopRequested`); Stop after it waits for RunComfy's answer, so that `job.wait()` can cancel the job."""
    upload = upload or UploadTracker()
    if should_stop():
        raise StopRequested("Stopped before submitting: nothing was sent and nothing is charged.")
    hand_up(Event(Phase.UPLOADING, message, within=0.6))
    task = asyncio.ensure_future(client.submit(request, upload=upload))
    try:
        stopped = await wait_watching(task, should_stop) is Waited.STOP
        if stopped and not upload.complete and not task.done():
            await cancel_and_wait(task)
            if upload.complete:  # the last bytes went out while the upload was being abandoned
                raise OutcomeUnknownError(
                    "Stopped just as the upload completed: RunComfy may have created the job and charged it, and its "
                    "answer was not waited for. It was not sent again; look for it in your RunComfy dashboard."
                )
            raise StopRequested(
                "Stopped while uploading: the upload was abandoned before it completed, so no job was created and nothing is charged."
            )
        if stopped:
            hand_up(Event(None, "Stop pressed: waiting for RunComfy to confirm the submit so the job can be cancelled…"))
            await asyncio.wait({task})
    except BaseException:
        await cancel_and_wait(task)
        raise
    job = task.result()
    hand_up(Event(Phase.QUEUED, f"Submitted: request {job.request_id}", request_id=job.request_id))
    return job
