"""One run, as the node makes it: validate, encode references, submit once, wait, download, assemble,
and what the user sees meanwhile (`Progress`: a line of text and a fraction of the whole run).

Plain Python on numpy arrays, so scripts and tests drive exactly what the ComfyUI node
drives. Every check runs before anything is encoded or sent. Runs of identical inputs are
serialised (`resume.ResumeStore.exclusive`), so the second one collects what the first paid
for. Once a submit may have reached RunComfy, local trouble (disk, cache, assembly) only ever
adds a warning line: the run goes on. Every wait is set by `Timing`, every memory and disk
bound by `Limits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .client import STATUS_INTERVAL_S, Price, RetryPolicy, RunComfyClient, Timeouts, upload_slots
from .config import Credentials, Limits, resolve_base_url, resolve_credentials
from .downloads import (
    DOWNLOAD_DEADLINE_S,
    DOWNLOAD_READ_TIMEOUT_S,
    DOWNLOAD_RETRY,
    ImageBatch,
    ResultDownloader,
    UrlPolicy,
    assemble,
)
from .errors import (
    AuthenticationError,
    DeadlineExceededError,
    DownloadError,
    JobCancelledError,
    JobFailedError,
    OutcomeUnknownError,
    RequestNotFoundError,
    RunComfyError,
    StopRequested,
)
from .job import (
    DEFAULT_DEADLINE_S,
    Job,
    JobEvent,
    JobResult,
    PollSchedule,
    StopCheck,
    UploadTracker,
    never_stop,
    run_stoppable,
    submit_watching,
)
from .references import (
    REFERENCE_FORMATS,
    EncodedReference,
    PreparedReference,
    check_frame_shape,
    encode_references,
    map_in_threads,
    per_reference_byte_limit,
    prepare_reference,
)
from .resume import UNKNOWN_OUTCOME_HOLD_S, CachedResult, ResumeStore, request_fingerprint
from .schema import MODEL_ID, EditSequentialRequest, check_choice

log = logging.getLogger("runcomfy.seedream")


@dataclass(frozen=True)
class Timing:
    """Every wait of a run. The defaults are for real use; tests pass short ones."""

    deadline_s: float = DEFAULT_DEADLINE_S  # from submit to result
    submit_retry: RetryPolicy = field(default_factory=RetryPolicy)  # 429s and connections that never opened
    job_retry: RetryPolicy = field(default_factory=RetryPolicy.until_deadline)  # status/result reads of a paid job
    poll_schedule: Callable[[], PollSchedule] = PollSchedule
    timeouts: Timeouts = field(default_factory=Timeouts)
    download_retry: RetryPolicy = DOWNLOAD_RETRY
    download_read_timeout_s: float = DOWNLOAD_READ_TIMEOUT_S
    download_deadline_s: float = DOWNLOAD_DEADLINE_S
    price_wait_s: float = 0.5  # how long the submit may wait for the catalog price; then it goes without an estimate
    status_interval_s: float = STATUS_INTERVAL_S  # the least time between two status polls of this process


@dataclass(frozen=True)
class Reference:
    """One reference frame: (H, W, C) floats in 0..1 (or uint8) and the name the user knows it by."""

    label: str
    pixels: np.ndarray


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    urls: tuple[str, ...]
    images: ImageBatch  # float32 [B, H, W, 3] in 0..1, in result order; `native(i)` for each at its own size
    cost_usd: float | None = None
    notes: tuple[str, ...] = ()  # what the user should know about this result
    warnings: tuple[str, ...] = ()  # local trouble the run went on despite (at most one line)
    reused: bool = False  # served from the saved copy: nothing was sent


@dataclass(frozen=True)
class Progress:
    text: str
    fraction: float  # 0..1 of the whole run
    phase: str = "preparing"  # preparing | sharing | waiting | uploading | queued | generating | downloading | done


ProgressSink = Callable[[Progress], None]


class ProgressReporter:
    """Turns steps and job events into `Progress`, never letting the fraction go backwards. All of a run's
    warnings share one line ("Warning: …"), kept under every later message with the pinned cost estimate."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self.sink = sink
        self.fraction = 0.0
        self.pinned: dict[str, str] = {}
        self.phase = "preparing"
        self._warning_parts: dict[str, str] = {}

    @property
    def warnings(self) -> tuple[str, ...]:
        return ("Warning: " + "; ".join(self._warning_parts.values()),) if self._warning_parts else ()

    def pin(self, line: str, *, key: str) -> None:
        """Keep `line` (the cost estimate, what the prompt's count means) under every later message."""
        self.pinned[key] = line
        self(line)

    def warn(self, part: str, *, key: str) -> None:
        """Something the run goes on despite; a part with the same `key` replaces the earlier one."""
        self._warning_parts[key] = part
        self(self.warnings[0])

    def __call__(self, text: str, fraction: float | None = None, phase: str | None = None) -> None:
        self.phase = phase or self.phase
        if fraction is not None:
            self.fraction = max(self.fraction, min(1.0, fraction))
        under = [line for line in (*self.warnings, *self.pinned.values()) if line and line != text]
        if under:
            text = "\n".join((text, *under))
        if self.sink is not None:
            try:
                self.sink(Progress(text, self.fraction, self.phase))
            except Exception:  # noqa: BLE001 - showing progress must never end a run, least of all a paid one
                log.debug("the progress sink failed", exc_info=True)

    def job_event(self, event: JobEvent) -> None:
        if event.phase == "running":  # generation time is unknown: approach 0.8 smoothly so the bar keeps moving
            self(event.message, 0.2 + 0.6 * (1.0 - math.exp(-(event.elapsed_s or 0.0) / 90.0)), "generating")
        else:
            fraction = {"submitting": 0.1, "submitted": 0.15, "queued": 0.17, "finishing": 0.8}.get(event.phase)
            self(event.message, fraction, {"submitted": "queued", "queued": "queued"}.get(event.phase))


@dataclass
class _Run:
    """What one run knows once its inputs are checked."""

    fingerprint: str
    store: ResumeStore
    report: ProgressReporter
    stop: StopCheck
    timing: Timing
    limits: Limits
    base_url: str
    after_submit: Callable[[], None]
    notes: list[str] = field(default_factory=list)
    reference_format: str = "png"
    client: RunComfyClient | None = None  # a pool shared with other runs (a batch); None: this run opens its own


async def generate(
    references: Sequence[Reference],
    request: EditSequentialRequest,
    *,
    credentials: Credentials | None = None,
    base_url: str | None = None,
    state_dir: Path | None = None,
    on_progress: ProgressSink | None = None,
    should_stop: StopCheck | None = None,
    timing: Timing | None = None,
    limits: Limits | None = None,
    after_submit: Callable[[], None] = lambda: None,
    reference_format: str = "png",
    client: RunComfyClient | None = None,
    on_planned: Callable[[str, int], Awaitable[Awaitable[GenerationResult] | None]] | None = None,
) -> GenerationResult:
    """One run: `references` (pixels) are encoded and sent before the URLs in `request.images`.

    With `state_dir`, a paid request is journaled and its result saved on disk (else in memory).
    `after_submit()` runs once RunComfy holds the references and the encoded copies are freed.
    `reference_format` is "png" (lossless) or "jpeg" (quality 95, far fewer bytes to upload).
    `client` shares a connection pool between runs; `on_planned(fingerprint, images_charged)` is awaited once the
    run knows what it would pay for, before it waits for an identical run or submits (a batch's cost estimate);
    it may answer with an awaitable of an identical run's result, which this run then returns.
    """
    stop = should_stop or never_stop
    report = ProgressReporter(on_progress)

    # 1. Everything the user can get wrong, before any work or spending.
    credentials = credentials or resolve_credentials()
    base_url = base_url or resolve_base_url()
    request = request.validate(encoded_references=len(references))
    check_choice("reference_format", reference_format, REFERENCE_FORMATS)
    for ref in references:
        check_frame_shape(ref.label, ref.pixels)
    limits = limits or Limits()
    count_notes = request.count_notes()
    for note in count_notes:  # before any spending, and kept in view until the end
        report.pin(note[0].upper() + note[1:], key="count")

    # 2. Clean pixels; then, one run at a time per distinct inputs, collect or submit.
    prepared = await _prepare(references, stop, report)
    fingerprint = request_fingerprint(
        model_id=MODEL_ID,
        base_url=base_url,
        settings=request.settings() | ({"reference_format": reference_format} if reference_format != "png" and references else {}),
        reference_digests=[p.digest for p in prepared],
        reference_urls=request.urls,
    )
    store = ResumeStore(
        state_dir,
        warn=lambda line: report.warn(line, key="resume store"),
        max_entries=limits.cache_max_entries,
        max_bytes=limits.cache_max_bytes,
    )
    run = _Run(
        fingerprint=fingerprint,
        store=store,
        report=report,
        stop=stop,
        timing=timing or Timing(),
        limits=limits,
        base_url=base_url,
        after_submit=after_submit,
        notes=list(count_notes),
        reference_format=reference_format,
        client=client,
    )
    if on_planned is not None:  # part of a batch: its estimate first; an identical item's result is shared
        stopped, shared = await run_stoppable(on_planned(fingerprint, request.max_images_sent), stop)
        if stopped:
            raise StopRequested("Stopped before anything was sent: nothing is charged.")
        if shared is not None:
            report("Waiting for an identical item of the list, to share its job and its images…", 0.03, "sharing")
            stopped, result = await run_stoppable(shared, stop)
            if stopped:
                raise StopRequested("Stopped while an identical item of the list ran the job this one shares.")
            return result
    waiting = "Waiting for an identical run of these inputs to finish, to share its result instead of paying twice…"
    async with store.exclusive(fingerprint, stop, lambda: report(waiting, 0.03, "sharing")):
        return await _collect_or_submit(run, credentials, request, prepared)


async def _collect_or_submit(
    run: _Run, credentials: Credentials, request: EditSequentialRequest, prepared: list[PreparedReference]
) -> GenerationResult:
    report = run.report
    resume_id: str | None = None
    cached = await run.store.cached(run.fingerprint)
    if cached is not None and not cached.files:
        resume_id = cached.request_id
    elif cached is not None:
        try:
            images = await _assemble(run, cached.files, "Saved result")
        except DownloadError as damaged:
            report.warn(f"the saved images of request {cached.request_id} are damaged ({damaged}); collecting them again", key="saved")
            await run.store.drop_result(run.fingerprint)
            resume_id = cached.request_id
        else:
            report(f"Reused the saved images of request {cached.request_id}: nothing sent, nothing charged.", 1.0, "done")
            notes = (f"saved result of request {cached.request_id} reused; change the seed for new images", *run.notes)
            return GenerationResult(cached.request_id, cached.urls, images, cached.cost_usd, notes, report.warnings, reused=True)
    entry = await run.store.journal_entry(run.fingerprint)
    if entry is not None and entry.state == "unknown_outcome" and resume_id is None:
        raise OutcomeUnknownError(
            "An earlier submit of exactly these inputs got no answer, so it may be running and charged; to avoid "
            "paying twice it is not sent again. Check your RunComfy dashboard, or change the seed to submit anew "
            f"(this hold ends {UNKNOWN_OUTCOME_HOLD_S // 60} minutes after that submit"
            + (", or when ComfyUI restarts, since the user folder could not keep it)." if entry.only_in_memory else ").")
        )
    if entry is not None and resume_id is None:
        resume_id = entry.request_id

    timing = run.timing
    async with _client_for(run, credentials) as client:
        price_lookup = asyncio.ensure_future(client.price())
        try:
            result = await _resume(client, run, resume_id) if resume_id else None
            if result is None:
                price = await _within(price_lookup, timing.price_wait_s)
                if price is not None:
                    report.pin(price.estimate(request.max_images_sent), key="cost")
                async with _upload_turn(run):
                    encoded = await _encode(run, prepared)
                    prepared.clear()  # the clean pixels are not needed any more (the caller's list is this one)
                    job = await _submit(client, run, request, encoded)
                result = await _settle(run, job)
                if len(result.urls) < request.max_images_sent:
                    run.notes.append(f"the model returned {len(result.urls)} of up to {request.max_images_sent} images")
        finally:
            price_lookup.cancel()

    # 3. Download, keep a copy, assemble. The journal entry stays: a second record if the copy is lost.
    files = await _download(run, result)
    await run.store.store_result(run.fingerprint, CachedResult(result.request_id, result.urls, result.cost_usd, files))
    try:
        images = await _assemble(run, files, "Result image")
    except DownloadError as unusable:  # a hostile or broken file: collecting this request again cannot help
        await run.store.drop_result(run.fingerprint)
        await run.store.forget(run.fingerprint)
        raise DownloadError(str(unusable), request_id=result.request_id) from None
    return GenerationResult(result.request_id, result.urls, images, result.cost_usd, tuple(run.notes), report.warnings)


@contextlib.asynccontextmanager
async def _client_for(run: _Run, credentials: Credentials) -> AsyncIterator[RunComfyClient]:
    """This run's client: on the batch's shared pool when there is one, else its own."""
    if run.client is not None:
        yield run.client.sharing_pool(on_retry=run.report)
        return
    timing = run.timing
    async with RunComfyClient(
        credentials,
        run.base_url,
        retry=timing.submit_retry,
        job_retry=timing.job_retry,
        timeouts=timing.timeouts,
        on_retry=run.report,
        status_interval_s=timing.status_interval_s,
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def _upload_turn(run: _Run) -> AsyncIterator[None]:
    """Hold one of the process's upload slots (`Limits.max_uploads`) from encoding to RunComfy's answer."""
    slots = upload_slots(run.limits.max_uploads)
    if slots.locked():
        run.report("Waiting for a free upload slot (other runs of this ComfyUI are uploading)…", None, "waiting")
    stopped, _ = await run_stoppable(slots.acquire(), run.stop)
    if stopped:
        raise StopRequested("Stopped while waiting to upload: nothing was sent and nothing is charged.")
    run.report.phase = "uploading"
    try:
        yield
    finally:
        slots.release()


async def _within(task: asyncio.Future[Price | None], seconds: float) -> Price | None:
    """The task's result if it is ready within `seconds`, else None (it keeps running)."""
    await asyncio.wait({task}, timeout=seconds)
    return task.result() if task.done() and not task.cancelled() and task.exception() is None else None


async def _prepare(references: Sequence[Reference], stop: StopCheck, report: ProgressReporter) -> list[PreparedReference]:
    """Clean and fingerprint every reference in worker threads."""

    def prepared_one(prepared: PreparedReference, done: int) -> None:
        extra = f" ({prepared.label}: {'; '.join(prepared.notes)})" if prepared.notes else ""
        report(f"Preparing references {done}/{len(references)}{extra}", 0.03 * done / len(references))

    if references:
        report(f"Preparing references 0/{len(references)}", 0.0)
    stopped, prepared = await run_stoppable(
        map_in_threads(lambda ref: prepare_reference(ref.label, ref.pixels), references, on_done=prepared_one), stop
    )
    if stopped:
        raise StopRequested("Stopped while preparing the references: nothing was sent and nothing is charged.")
    return prepared


async def _encode(run: _Run, prepared: list[PreparedReference]) -> list[EncodedReference]:
    """Encode every reference in parallel, each within its share of the request body."""
    total = len(prepared)
    report = run.report
    fmt = run.reference_format.upper()

    def encoded_one(encoded: EncodedReference, done: int) -> None:
        fresh = [note for note in encoded.notes if note.startswith("downscaled")]
        extra = f" ({encoded.label}: {'; '.join(fresh)})" if fresh else ""
        report(f"Encoding references {done}/{total} as {fmt}{extra}", 0.03 + 0.05 * done / total)

    if total:
        report(f"Encoding references 0/{total} as {fmt}", 0.03)
    stopped, encoded = await run_stoppable(
        encode_references(prepared, max_file_bytes=per_reference_byte_limit(total), fmt=run.reference_format, on_done=encoded_one),
        run.stop,
    )
    if stopped:
        raise StopRequested("Stopped while encoding the references: nothing was sent and nothing is charged.")
    run.notes.extend(f"{e.label}: {note}" for e in encoded for note in e.notes)
    return encoded


async def _settle(run: _Run, job: Job) -> JobResult:
    """Wait for a job, keeping the journal right: a job that ended without results is forgotten."""
    try:
        return await job.wait(
            deadline_s=run.timing.deadline_s,
            should_stop=run.stop,
            on_event=run.report.job_event,
            poll_schedule=run.timing.poll_schedule(),
        )
    except (JobFailedError, JobCancelledError):
        await run.store.forget(run.fingerprint)
        raise
    except (DeadlineExceededError, StopRequested) as ended:
        if ended.cancelled:
            await run.store.forget(run.fingerprint)
        raise


async def _resume(client: RunComfyClient, run: _Run, request_id: str) -> JobResult | None:
    """Wait for the request these inputs already paid for; None when the service no longer has it."""
    run.report(f"Resumed request {request_id} (submitted earlier with the same inputs)…", 0.15)
    run.notes.append(f"resumed request {request_id}")
    try:
        return await _settle(run, Job.resume(client, request_id))
    except (RequestNotFoundError, AuthenticationError) as gone:
        if isinstance(gone, AuthenticationError) and gone.error_code != "403001":
            raise
    await run.store.forget(run.fingerprint)
    run.notes[-1] = f"request {request_id} is no longer known to RunComfy, so a new one was submitted"
    run.report(f"Request {request_id} is no longer known to RunComfy; submitting a new one.", 0.1)
    return None


async def _submit(client: RunComfyClient, run: _Run, request: EditSequentialRequest, encoded: list[EncodedReference]) -> Job:
    """Submit once.

    Just before the body's last piece is handed over, the inputs are journaled as "outcome unknown": a process
    killed before the answer arrives leaves a hold, not an invitation to pay again. The answer then replaces it:
    the request id, or (a definite refusal, or an upload that broke off) nothing.
    """
    sendable = request.with_references([e.uri for e in encoded])
    uploading = "Submitting the job to RunComfy…"
    if encoded:
        size = sum(len(e.uri.base64) for e in encoded) / 1e6
        count = f"{len(encoded)} {run.reference_format.upper()} reference{'s' if len(encoded) != 1 else ''}"
        uploading = f"Submitting the job to RunComfy: uploading {count}, {size:.1f} MB…"
    encoded.clear()  # `sendable` holds the only copy of the encoded references: freed once submitted
    unanswered = False

    async def sending_last_piece() -> None:
        nonlocal unanswered
        unanswered = True
        await run.store.record_unknown_outcome(run.fingerprint)

    try:
        job = await submit_watching(
            client,
            sendable,
            should_stop=run.stop,
            on_event=run.report.job_event,
            upload=UploadTracker(on_last_piece=sending_last_piece),
            message=uploading,
        )
    except OutcomeUnknownError:
        await run.store.record_unknown_outcome(run.fingerprint)
        raise
    except RunComfyError:
        if unanswered:  # RunComfy answered, or the upload broke off: no job exists
            await run.store.forget(run.fingerprint)
        raise
    del sendable  # the service has the references: the encoded copies are freed while we wait
    await run.store.record_submitted(run.fingerprint, job.request_id)
    try:
        run.after_submit()
    except Exception as exc:  # noqa: BLE001 - a caller's hook cannot end a paid job
        run.report.warn(f"the after-submit hook failed ({type(exc).__name__})", key="hook")
    return job


async def _download(run: _Run, result: JobResult) -> list[bytes]:
    """Every result file as served, in parallel."""
    count = len(result.urls)
    report = run.report
    report(f"Downloading 0/{count}", 0.8, "downloading")
    timing = run.timing
    downloader = ResultDownloader(
        UrlPolicy.for_base_url(run.base_url),
        max_bytes=run.limits.max_download_bytes,
        retry=timing.download_retry,
        read_timeout_s=timing.download_read_timeout_s,
        deadline_s=timing.download_deadline_s,
    )
    try:
        stopped, files = await run_stoppable(
            downloader.fetch_all(
                result.urls,
                request_id=result.request_id,
                on_progress=lambda done, total: report(f"Downloading {done}/{total}", 0.8 + 0.15 * done / total),
            ),
            run.stop,
        )
    except DownloadError as failed:
        if failed.transient:
            raise DownloadError(
                f"{failed} Run the node again with the same inputs to collect them without paying again.",
                request_id=result.request_id,
                transient=True,
            ) from None
        await run.store.forget(run.fingerprint)  # expired or unusable files: collecting this request again cannot help
        raise
    if stopped:
        raise StopRequested(
            f"Stopped while downloading the results of request {result.request_id}; the job itself is finished "
            "(and charged). Run the node again with the same inputs to collect them without paying again.",
            request_id=result.request_id,
        )
    return files


async def _assemble(run: _Run, files: Sequence[bytes], label: str) -> ImageBatch:
    """The batch of `files` within the memory budget; its notes and warning join the run's."""
    try:
        assembled = await assemble(files, label=label, max_bytes=run.limits.batch_max_bytes)
    except MemoryError:
        raise RunComfyError(
            "There is not enough memory to assemble the result images. They are saved: free some memory "
            "and run the node again with the same inputs to collect them without paying again."
        ) from None
    if assembled.warning:
        run.report.warn(assembled.warning, key="memory")
    run.notes.extend(assembled.notes)
    return assembled.images
