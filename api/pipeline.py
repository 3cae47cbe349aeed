"""The whole job for one node run: validate, encode references, submit, wait, download.

Plain Python on numpy arrays, so scripts and tests can drive exactly what the
ComfyUI node drives. Every check runs before anything is encoded or sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .client import RunComfyClient
from .config import Credentials, resolve_base_url, resolve_credentials
from .downloads import ResultDownloader, UrlPolicy, decode_image
from .errors import (
    AuthenticationError,
    DownloadError,
    JobCancelledError,
    JobFailedError,
    OutcomeUnknownError,
    RequestNotFoundError,
    StopRequested,
)
from .fingerprint import request_fingerprint
from .image_batch import ImageBatch
from .job import DEFAULT_DEADLINE_S, run_job, wait_for_job
from .journal import UNKNOWN_OUTCOME_HOLD_S, Journal
from .memory import release_free_memory
from .parallel import map_in_threads
from .pricing import catalog_price
from .progress import ProgressReporter, ProgressSink
from .references import (
    DEFAULT_PNG,
    PngSettings,
    PreparedReference,
    check_frame_shape,
    prepare_reference,
)
from .result_cache import ResultCache
from .schema import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_IMAGES,
    MODEL_ID,
    EditSequentialRequest,
    check_image_url,
)
from .upload_body import StreamedReferences
from .waiting import StopCheck, never_stop, run_stoppable

PRICE_WAIT_S = 0.5  # how long the submit may wait for the catalog price; then it goes without an estimate


@dataclass(frozen=True)
class GenerationSettings:
    """The node's widgets, named as the user sees them."""

    prompt: str
    max_images: int = DEFAULT_MAX_IMAGES
    image_size: str = DEFAULT_IMAGE_SIZE
    seed: int | None = None
    optimize_prompt: str = "fast"
    sequential_image_generation: str = "auto"

    def request(self, reference_count: int) -> EditSequentialRequest:
        """The submit these widgets make for `reference_count` references, checked against every schema rule
        that does not need the images themselves (those are checked as they are encoded)."""
        return EditSequentialRequest(
            images=(),
            text=self.prompt,
            max_images=self.max_images,
            image_size=self.image_size,
            seed=self.seed,
            optimize_prompt=self.optimize_prompt,
            sequential_image_generation=self.sequential_image_generation,
        ).validate_settings(reference_count)


@dataclass(frozen=True)
class Reference:
    """One reference frame: (H, W, C) floats in 0..1 and the name the user knows it by."""

    label: str
    pixels: np.ndarray


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    urls: tuple[str, ...]
    images: ImageBatch  # float32 [B, H, W, 3] in 0..1, in result order; `native(i)` for each at its own size
    cost_usd: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    reused: bool = False  # served from the on-disk cache: nothing was sent


def parse_url_lines(text: str | None) -> list[str]:
    """One URL per line; blank lines and lines starting with # are ignored."""
    if not text:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@dataclass
class _RunState:
    """Where this run's journal entry and cached result live (None: nothing is kept on disk)."""

    fingerprint: str
    journal: Journal | None
    cache: ResultCache | None

    async def remember_submit(self, request_id: str) -> None:
        if self.journal is not None:
            await asyncio.to_thread(self.journal.record_submitted, self.fingerprint, request_id)

    async def remember_unknown_outcome(self) -> None:
        if self.journal is not None:
            await asyncio.to_thread(self.journal.record_unknown_outcome, self.fingerprint)

    async def forget(self) -> None:
        if self.journal is not None:
            await asyncio.to_thread(self.journal.forget, self.fingerprint)


async def _decode_files(files: Sequence[bytes]) -> ImageBatch:
    batch = ImageBatch(len(files))
    labelled = list(enumerate(files))
    await map_in_threads(
        lambda item: batch.place(item[0], decode_image(item[1], f"Saved result {item[0] + 1}")), labelled, name="runcomfy-decode"
    )
    return batch


async def _settle(state: _RunState, job):
    """Await a job, keeping the journal right: a job that ended without results is forgotten."""
    try:
        return await job
    except (JobFailedError, JobCancelledError):
        await state.forget()
        raise
    except StopRequested as stop:
        if stop.cancel_outcome == "cancelled":
            await state.forget()
        raise
    except OutcomeUnknownError:
        await state.remember_unknown_outcome()
        raise


async def generate(
    references: Sequence[Reference],
    image_urls: Sequence[str],
    settings: GenerationSettings,
    *,
    credentials: Credentials | None = None,
    base_url: str | None = None,
    state_dir: Path | None = None,
    on_progress: ProgressSink | None = None,
    should_stop: StopCheck | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    png: PngSettings = DEFAULT_PNG,
    client_options: dict | None = None,
) -> GenerationResult:
    """One node run. With `state_dir`, a paid request is journaled and its result cached on disk."""
    stop = should_stop or never_stop
    report = ProgressReporter(on_progress)

    # 1. Everything the user can get wrong, before any work or spending.
    credentials = credentials or resolve_credentials()
    base_url = base_url or resolve_base_url()
    request = settings.request(len(references) + len(image_urls))
    for ref in references:
        check_frame_shape(ref.label, ref.pixels)
    urls = [check_image_url(f"image_urls line {i}", url) for i, url in enumerate(image_urls, start=1)]

    # 2. Clean pixels, and have these exact inputs been paid for already?
    prepared = await _prepare(references, stop, report)
    state = _RunState(
        request_fingerprint(
            model_id=MODEL_ID,
            base_url=base_url,
            settings=asdict(settings),
            reference_digests=[p.digest for p in prepared],
            reference_urls=urls,
        ),
        Journal(state_dir) if state_dir else None,
        ResultCache(state_dir) if state_dir else None,
    )
    cached = await asyncio.to_thread(state.cache.load, state.fingerprint) if state.cache else None
    if cached is not None:
        images = await _decode_files(cached.files)
        report(f"Reused the saved images of request {cached.request_id}: nothing sent, nothing charged.", 1.0)
        notes = (f"saved result of request {cached.request_id} reused; change the seed for new images",)
        return GenerationResult(cached.request_id, cached.urls, images, cached.cost_usd, notes, reused=True)
    entry = await asyncio.to_thread(state.journal.get, state.fingerprint) if state.journal else None
    if entry is not None and entry.state == "unknown_outcome":
        raise OutcomeUnknownError(
            "An earlier submit of exactly these inputs got no answer, so it may be running and charged; to avoid "
            "paying twice it is not sent again. Check your RunComfy dashboard, or change the seed to submit anew "
            f"(this hold ends {UNKNOWN_OUTCOME_HOLD_S // 60} minutes after that submit)."
        )

    # 3. Collect the request these inputs already paid for, or submit once.
    notes: list[str] = []
    job_options = dict(deadline_s=deadline_s, on_event=report.job_event, should_stop=stop)
    price_lookup = asyncio.ensure_future(catalog_price(credentials, base_url, MODEL_ID))
    try:
        async with RunComfyClient(credentials, base_url, on_retry=lambda m: report(m), **(client_options or {})) as client:
            result = await _resume(client, state, entry, report, notes, job_options) if entry else None
            if result is None:
                price = await _within(price_lookup, PRICE_WAIT_S)
                if price is not None:
                    report.pin(price.estimate(request.max_images_sent))
                body = StreamedReferences(prepared, urls, request, png, report, notes)
                del prepared  # the encoder holds what it needs; nothing else keeps the clean pixels
                result = await _submit(client, state, body, job_options)
                if len(result.urls) < request.max_images_sent:
                    notes.append(f"the model returned {len(result.urls)} of up to {request.max_images_sent} images")
    finally:
        price_lookup.cancel()

    # 4. Download, keep a copy, and close the journal entry.
    images, files = await _download(result, base_url, state, stop, report)
    if state.cache is not None:
        await asyncio.to_thread(state.cache.store, state.fingerprint, result.request_id, result.urls, result.cost_usd, files)
    await state.forget()
    return GenerationResult(result.request_id, result.urls, images, result.cost_usd, tuple(notes))


async def _within(task: asyncio.Future, seconds: float):
    """The task's result if it is ready within `seconds`, else None (it keeps running)."""
    await asyncio.wait({task}, timeout=seconds)
    return task.result() if task.done() and not task.cancelled() else None


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


async def _resume(client, state: _RunState, entry, report: ProgressReporter, notes: list[str], job_options: dict):
    """Wait for the request these inputs already paid for; None when the service no longer has it."""
    if not entry.request_id:
        return None
    report(f"Resumed request {entry.request_id} (submitted earlier with the same inputs)…", 0.15)
    notes.append(f"resumed request {entry.request_id}")
    try:
        return await _settle(state, wait_for_job(client, entry.request_id, **job_options))
    except (RequestNotFoundError, AuthenticationError) as gone:
        if isinstance(gone, AuthenticationError) and gone.error_code != "403001":
            raise
    await state.forget()
    notes[-1] = f"request {entry.request_id} had expired, so a new one was submitted"
    report(f"Request {entry.request_id} is no longer known to RunComfy; submitting a new one.", 0.1)
    return None


async def _submit(client, state: _RunState, body: StreamedReferences, job_options: dict):
    """Submit once, uploading each reference as soon as it is encoded, and wait for the result."""

    async def submitted(request_id: str) -> None:
        body.close()  # the service has the references: free their encoded copies while we wait
        release_free_memory()
        await state.remember_submit(request_id)

    try:
        return await _settle(state, run_job(client, MODEL_ID, body.pieces, on_submitted=submitted, **job_options))
    finally:
        body.close()


async def _download(result, base_url: str, state: _RunState, stop: StopCheck, report: ProgressReporter):
    """Fetch and decode every result into one batch; the files are returned for the on-disk cache."""
    count = len(result.urls)
    report(f"Downloading 0/{count}", 0.8)
    downloader = ResultDownloader(UrlPolicy.for_base_url(base_url))
    images = ImageBatch(count)
    try:
        stopped, files = await run_stoppable(
            downloader.fetch_all(
                result.urls, images.place, lambda done, total: report(f"Downloading {done}/{total}", 0.8 + 0.2 * done / total)
            ),
            stop,
        )
    except DownloadError as failed:
        failed.request_id = result.request_id
        if failed.transient:
            failed.args = (f"{failed.args[0]} Run the node again with the same inputs to retry without paying again.",)
        else:  # expired or unusable files: collecting this request again cannot help
            await state.forget()
        raise
    if stopped:
        raise StopRequested(
            f"Stopped while downloading the results of request {result.request_id}; the job itself is finished "
            "(and charged). Run the node again with the same inputs to collect them without paying again.",
            request_id=result.request_id,
        )
    return images, files
