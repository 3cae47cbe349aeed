"""Running one job to completion: submit once, poll adaptively, collect the result.

Stop is checked every 0.2 s in every phase. A queued job is cancelled
remotely; a running one cannot be, and the user is told it may be charged.
Once the job exists, only the job itself (done, failed, cancelled), Stop or the
job's deadline ends the wait: status and result reads retry through outages
(see `client`), and the request id is announced the moment it is known.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .client import SUCCESS_STATES, JobResult, RequestBody, RunComfyClient, UploadTracker
from .errors import (
    DeadlineExceededError,
    JobCancelledError,
    JobFailedError,
    OutcomeUnknownError,
    RunComfyError,
    StopRequested,
)
from .polling import PollSchedule
from .waiting import StopCheck, cancel_and_wait, never_stop, wait_watching

DEFAULT_DEADLINE_S = 30 * 60
CANCEL_WAIT_S = 15.0


@dataclass(frozen=True)
class JobEvent:
    """Something the user should see while a job runs."""

    phase: str  # submitting | submitted | queued | running | finishing | stopping
    message: str
    request_id: str | None = None
    queue_position: int | None = None
    elapsed_s: float | None = None


EventSink = Callable[[JobEvent], None]


def _ignore(_: JobEvent) -> None:
    return None


class _Tracker:
    """The last remote state seen, so Stop and the deadline know whether the job is still queued."""

    def __init__(self) -> None:
        self.state: str | None = None
        self.running_since: float | None = None


SubmittedHook = Callable[[str], Awaitable[None]]


async def run_job(
    client: RunComfyClient,
    model_id: str,
    body: RequestBody,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    on_event: EventSink | None = None,
    should_stop: StopCheck | None = None,
    on_submitted: SubmittedHook | None = None,
    on_last_piece: Callable[[], Awaitable[None]] | None = None,
    poll_schedule: PollSchedule | None = None,
) -> JobResult:
    """Submit once, then wait for the result. `on_last_piece()` runs just before the body's last piece is handed
    over (a job may exist from then on), `on_submitted(request_id)` the moment the id is known. Neither may raise."""
    emit = on_event or _ignore
    stop = should_stop or never_stop
    deadline = asyncio.get_running_loop().time() + deadline_s

    if stop():
        raise StopRequested("Stopped before submitting: nothing was sent and nothing is charged.")
    emit(JobEvent("submitting", "Submitting the job to RunComfy…"))
    upload = UploadTracker(on_last_piece=on_last_piece)
    submit_task = asyncio.ensure_future(client.submit(model_id, body, upload))
    try:
        stop_pressed = await wait_watching(submit_task, stop) == "stop"
        if stop_pressed and not upload.complete and not submit_task.done():
            # The body is not complete, so the service cannot have a job from it: abandon the upload.
            await cancel_and_wait(submit_task)
            if upload.complete:  # the last bytes went out while the upload was being abandoned
                raise OutcomeUnknownError(
                    "Stopped just as the upload completed: RunComfy may have created the job and charged it, and its "
                    "answer was not waited for. It was not sent again; look for it in your RunComfy dashboard."
                )
            raise StopRequested(
                "Stopped while uploading: the upload was abandoned before it completed, so no job was created and nothing is charged."
            )
        if stop_pressed:
            emit(JobEvent("stopping", "Stop pressed: waiting for RunComfy to confirm the submit so the job can be cancelled…"))
            await asyncio.wait({submit_task})
    except BaseException:
        await cancel_and_wait(submit_task)
        raise
    request_id = submit_task.result().request_id
    emit(JobEvent("submitted", f"Submitted: request {request_id}", request_id=request_id))
    if on_submitted is not None:
        await on_submitted(request_id)  # must not raise: local trouble cannot end a paid job
    if stop_pressed:
        raise await _stopped(client, request_id, _Tracker(), emit)
    return await wait_for_job(
        client,
        request_id,
        deadline_s=deadline - asyncio.get_running_loop().time(),
        on_event=emit,
        should_stop=stop,
        poll_schedule=poll_schedule,
        just_submitted=True,
    )


async def wait_for_job(
    client: RunComfyClient,
    request_id: str,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    on_event: EventSink | None = None,
    should_stop: StopCheck | None = None,
    poll_schedule: PollSchedule | None = None,
    just_submitted: bool = False,
) -> JobResult:
    """Poll a submitted job until it succeeds, fails, is stopped or the deadline passes."""
    emit = on_event or _ignore
    stop = should_stop or never_stop
    deadline = asyncio.get_running_loop().time() + deadline_s
    tracker = _Tracker()
    poll_task = asyncio.ensure_future(
        _poll_until_finished(client, request_id, tracker, emit, poll_schedule or PollSchedule(), just_submitted)
    )
    try:
        outcome = await wait_watching(poll_task, stop, deadline=deadline)
    except BaseException:
        await cancel_and_wait(poll_task)
        raise
    if outcome == "done":
        return poll_task.result()
    await cancel_and_wait(poll_task)
    if outcome == "stop":
        raise await _stopped(client, request_id, tracker, emit)
    raise await _deadline_passed(client, request_id, tracker, deadline_s)


async def _poll_until_finished(
    client: RunComfyClient,
    request_id: str,
    tracker: _Tracker,
    emit: EventSink,
    schedule: PollSchedule,
    just_submitted: bool,
) -> JobResult:
    submitted_at = time.monotonic()
    last_seen: tuple[str, int | None] | None = None
    if just_submitted:  # it cannot be done yet: the first check waits a moment
        await asyncio.sleep(schedule.next_delay(progressed=True))
    while True:
        status = await client.status(request_id)
        tracker.state = status.state
        seen = (status.state, status.queue_position)
        progressed = seen != last_seen
        last_seen = seen
        now = time.monotonic()
        if status.state == "in_queue":
            where = f" (position {status.queue_position})" if status.queue_position is not None else ""
            emit(JobEvent("queued", f"Queued at RunComfy{where}", request_id, status.queue_position, now - submitted_at))
        elif status.state == "in_progress":
            tracker.running_since = tracker.running_since or now
            elapsed = now - tracker.running_since
            emit(JobEvent("running", f"Generating… {elapsed:.0f} s", request_id, None, elapsed))
        elif status.state == "cancelled":
            raise JobCancelledError(
                "The job was cancelled at RunComfy (not by this node). Run the node again to submit a new job.",
                request_id=request_id,
            )
        else:
            emit(JobEvent("finishing", "Fetching the result…", request_id))
            result = await client.result(request_id, include_cost=True)
            tracker.state = result.state
            if result.state in SUCCESS_STATES:
                if not result.urls:
                    raise JobFailedError(
                        "RunComfy reports the job finished but returned no images. Try a clearer prompt "
                        "that states how many images to make.",
                        request_id=request_id,
                    )
                return result
            if result.state == "failed":
                reason = result.error or "no reason given"
                raise JobFailedError(
                    f"RunComfy reports the generation failed: {reason}. Adjust the prompt or references and run again.",
                    request_id=request_id,
                )
            if result.state == "cancelled":
                raise JobCancelledError("The job was cancelled at RunComfy.", request_id=request_id)
            # Status and result can disagree for a moment; keep polling.
        await asyncio.sleep(schedule.next_delay(progressed=progressed))


async def _cancel_outcome(client: RunComfyClient, request_id: str) -> tuple[str, str]:
    """("cancelled" | "not_cancellable" | "unknown", detail)."""
    try:
        answer = await asyncio.wait_for(client.cancel(request_id), CANCEL_WAIT_S)
    except asyncio.TimeoutError:
        return "unknown", "RunComfy did not answer the cancel request in time"
    except RunComfyError as exc:
        return "unknown", f"the cancel request failed: {exc}"
    if answer.outcome == "cancelled" or answer.state == "cancelled":
        return "cancelled", ""
    if answer.outcome == "not_cancellable":
        return "not_cancellable", ""
    return "unknown", f"RunComfy answered {answer.outcome or 'nothing clear'}"


async def _stopped(client: RunComfyClient, request_id: str, tracker: _Tracker, emit: EventSink) -> StopRequested:
    """Stop pressed after submit: cancel if still queued; the error to raise says what happened."""
    if tracker.state not in (None, "in_queue"):
        return StopRequested(
            f"Stopped. Request {request_id} was already generating; RunComfy cannot cancel a running job, "
            "so it will finish and may still be charged.",
            request_id=request_id,
            cancel_outcome="not_attempted",
        )
    emit(JobEvent("stopping", f"Stop pressed: cancelling queued request {request_id}…", request_id))
    outcome, detail = await _cancel_outcome(client, request_id)
    if outcome == "cancelled":
        message = f"Stopped. Queued request {request_id} was cancelled at RunComfy; nothing is charged."
    elif outcome == "not_cancellable":
        message = (
            f"Stopped. Request {request_id} had already started, so RunComfy could not cancel it; it will finish and may still be charged."
        )
    else:
        message = f"Stopped, but cancelling request {request_id} is unconfirmed ({detail}); it may still run and be charged."
    emit(JobEvent("stopping", message, request_id))
    return StopRequested(message, request_id=request_id, cancel_outcome=outcome)


async def _deadline_passed(client: RunComfyClient, request_id: str, tracker: _Tracker, deadline_s: float) -> DeadlineExceededError:
    """The deadline passed: a still-queued job is cancelled so it costs nothing."""
    minutes = f"{deadline_s / 60:.0f} min" if deadline_s >= 60 else f"{deadline_s:.0f} s"
    if tracker.state in (None, "in_queue"):
        outcome, _ = await _cancel_outcome(client, request_id)
        if outcome == "cancelled":
            return DeadlineExceededError(
                f"Request {request_id} was still queued after {minutes}, so it was cancelled; nothing is charged. "
                "RunComfy is busy: run again later.",
                request_id=request_id,
                cancelled=True,
            )
    return DeadlineExceededError(
        f"Request {request_id} did not finish within {minutes}; the node stopped waiting. It may still finish and be charged.",
        request_id=request_id,
    )
