"""One run, from numpy pixels to an assembled batch of results, and what the runs of one execution share.

    async with Session.open(should_stop=…) as session:     # the account, one connection pool, one Stop
        planned = await plan(references, request, session)   # every check, clean pixels, fingerprint
        result = await execute(planned, session)    # cache → records → resume or submit → wait
                                                            #   → download → save → assemble

`generate()` does both for one run. `collect(request_id, session)` is the other kind of run: a request
made elsewhere, collected by its id (never submitted, never cancelled). Plain Python on numpy arrays, so scripts
and tests drive exactly what the ComfyUI node drives. Every check runs before anything is encoded or sent. Runs
of identical inputs are serialised (`resume.RunStore.exclusive`, across processes too), so the second one collects what the first
paid for. Once a submit may have reached RunComfy, local trouble (disk, cache, assembly) only ever adds a
warning line: the run goes on. Every wait is set by `Timing`, every memory and disk bound by `Limits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .balance import DEFAULT_WAIT_S as BALANCE_WAIT_S
from .balance import Balance
from .client import STATUS_INTERVAL_S, Price, RetryPolicy, RunComfyClient, Timeouts
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
    InsufficientBalanceError,
    JobCancelledError,
    JobFailedError,
    OutcomeUnknownError,
    RequestNotFoundError,
    RunComfyError,
    SpendingLimitError,
    StopRequested,
)
from .events import (
    Latch,
    Phase,
    Progress,
    StopCheck,
    View,
    Waited,
    also_heard_by,
    heard_by,
    never_stop,
    pin,
    say,
    stoppable,
    wait_watching,
    warn,
)
from .job import DEFAULT_DEADLINE_S, Job, JobResult, PollSchedule, UploadTracker, check_request_id, submit_watching
from .records import (
    LEASE_S,
    LOCK_WAIT_S,
    UNKNOWN_OUTCOME_HOLD_S,
    Busy,
    CachedResult,
    Records,
    collection_fingerprint,
    plausible_cost,
    request_fingerprint,
)
from .references import (
    REFERENCE_FORMATS,
    EncodedReference,
    PreparedReference,
    check_frame_shape,
    encode_references,
    per_reference_byte_limit,
    prepare_references,
)
from .resume import RunStore, held_elsewhere
from .schema import MAX_IMAGES_LIMIT, MODEL_ID, EditSequentialRequest, check_choice
from .shared import LOOP_STATE
from .spending import JobPlan, Spending, SpendingLimits, overcharge_line, overcharge_refusal, overcharged, plausible

log = logging.getLogger("runcomfy.seedream")
NOTHING_SENT = "nothing was sent and nothing is charged."


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
    limit_price_wait_s: float = 20.0  # how long a run under a spending limit waits for the price (a limit needs one)
    status_interval_s: float = STATUS_INTERVAL_S  # the least time between two status polls of this process
    balance_wait_s: float = BALANCE_WAIT_S  # how long a run waits for the balance (read beside the price); then it goes unchecked
    lease_s: float = LEASE_S  # a run that dies frees its locks and reservations for other processes after this
    records_wait_s: float = LOCK_WAIT_S  # how long another process may hold the records before a run goes on without it


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
    resumed: bool = False  # collected a request an earlier run paid for: nothing is charged now

    @property
    def charged_now(self) -> bool:
        """This run submitted the job (and pays `cost_usd` for it)."""
        return not (self.reused or self.resumed)


@dataclass
class Session:
    """What the runs of one execution share: the account and service, one connection pool, one Stop that
    latches, the waits and bounds, the user folder, and one catalog price lookup."""

    credentials: Credentials
    base_url: str
    client: RunComfyClient
    stop: Latch
    timing: Timing
    limits: Limits
    spending: Spending
    records: Records
    owner: str  # this run's name in the records
    state_dir: Path | None = None
    after_submit: Callable[[], None] = lambda: None  # once RunComfy holds the references and their copies are freed
    _price: asyncio.Future | None = field(default=None, repr=False)
    held_back: str | None = None  # why the jobs not yet sent are not sent: a job of this run cost more than its estimate
    balance: Balance | None = None  # the account's balance, read beside the price (`balance.Balance`)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        *,
        credentials: Credentials | None = None,
        base_url: str | None = None,
        should_stop: StopCheck = never_stop,
        timing: Timing | None = None,
        limits: Limits | None = None,
        state_dir: Path | None = None,
        after_submit: Callable[[], None] = lambda: None,
        spending_limits: SpendingLimits | None = None,
        node_id: str | None = None,
        prompt_id: str | None = None,
    ) -> AsyncIterator[Session]:
        credentials = credentials or resolve_credentials()
        base_url = base_url or resolve_base_url()
        timing = timing or Timing()
        limits_of_spending = spending_limits or SpendingLimits.resolve()  # the environment's, when set
        stop = Latch(should_stop)
        try:
            records = await asyncio.to_thread(functools.partial(Records.at, state_dir, wait_s=timing.records_wait_s))
        except Busy:  # another program holds them: going on alone could pay for what another process pays for
            held_elsewhere(state_dir)
        owner = uuid.uuid4().hex  # this run, in the records: its lease says it is alive
        spending = Spending(
            limits_of_spending,
            records,
            service=base_url.rstrip("/"),
            owner=owner,
            should_stop=stop,
            node_id=node_id,
            prompt_id=prompt_id,
            lock_wait_s=timing.records_wait_s,
            lease_s=timing.lease_s,
        )
        client = RunComfyClient(
            credentials,
            base_url,
            retry=timing.submit_retry,
            job_retry=timing.job_retry,
            timeouts=timing.timeouts,
            status_interval_s=timing.status_interval_s,
        )
        session = cls(credentials, base_url, client, stop, timing, limits or Limits(), spending, records, owner, state_dir, after_submit)
        with contextlib.suppress(Exception):  # alive at once; its reservations renew the lease in their own transaction
            await asyncio.to_thread(records.renew, owner, timing.lease_s)
        session.balance = Balance(credentials, model_base=base_url, wait_s=timing.balance_wait_s, stop=session.stop)
        lease = asyncio.ensure_future(_keep_alive(records, owner, timing.lease_s))
        try:
            yield session
        finally:
            lease.cancel()
            if session._price is not None:
                session._price.cancel()
            await client.aclose()
            await spending.close()
            with contextlib.suppress(Exception):  # its locks and lease end with it; a refusal ends them with the lease
                await asyncio.to_thread(records.end_run, owner)

    async def price(self, *, wait_s: float | None = None) -> Price | None:
        """The catalog price if it is known within `wait_s` (default `Timing.price_wait_s`), else None (the lookup
        goes on). The wait watches Stop: nothing has been sent yet, so Stop ends the run at once."""
        if self._price is None:
            self.balance.start()  # read beside the price, so that waiting for it adds no time
            self._price = asyncio.ensure_future(self.client.price(fresh=self.spending.limits.any))  # a limit needs today's
        deadline = asyncio.get_running_loop().time() + (self.timing.price_wait_s if wait_s is None else wait_s)
        if await wait_watching(self._price, self.stop, deadline=deadline) is Waited.STOP:
            raise StopRequested(f"Stopped while reading RunComfy's price for this model: {NOTHING_SENT}")
        done = self._price.done() and not self._price.cancelled() and self._price.exception() is None
        return self._price.result() if done else None

    async def usd_per_image(self) -> float | None:
        """The price per image for the spending gate: under a limit, waited for up to `Timing.limit_price_wait_s`."""
        price = await self.price(wait_s=self.timing.limit_price_wait_s if self.spending.limits.any else None)
        return price.usd_per_image if price is not None else None

    def charged(self, request_id: str, cost_usd: float | None, estimate_usd: float | None) -> None:
        """A job of this run was charged `cost_usd`: above the estimate its spending limit was checked with, the jobs
        not yet sent are held back, and the run says so once (not once per item)."""
        if not self.spending.limits.any or not overcharged(cost_usd, estimate_usd) or self.held_back is not None:
            return
        self.held_back = overcharge_refusal(request_id, cost_usd, estimate_usd)
        warn(overcharge_line(request_id, cost_usd, estimate_usd), key="price")

    def store(self) -> RunStore:
        """The records and saved results of the session's folder, within the cache bounds."""
        limits = self.limits
        return RunStore(
            self.records,
            self.owner,
            max_entries=limits.cache_max_entries,
            max_bytes=limits.cache_max_bytes,
            wait_s=self.timing.records_wait_s,
            lease_s=self.timing.lease_s,
        )


async def _keep_alive(records: Records, owner: str, lease_s: float) -> None:
    """Renew the run's lease every third of it, for as long as the run lasts."""
    while True:
        await asyncio.sleep(lease_s / 3)
        with contextlib.suppress(Exception):  # the records keep themselves in memory when the disk refuses
            await asyncio.to_thread(records.renew, owner, lease_s)


@dataclass
class Plan:
    """A run whose inputs passed every check, with its references cleaned: what it would pay for."""

    request: EditSequentialRequest
    references: list[PreparedReference]
    reference_format: str
    fingerprint: str
    notes: tuple[str, ...]  # what the prompt's count means, shown before paying

    @property
    def images_charged(self) -> int:
        return self.request.max_images_sent

    @property
    def job(self) -> JobPlan:
        """What its job would be, for the spending gate and the records."""
        return JobPlan(self.fingerprint, self.images_charged, self.request.prompt)

    @property
    def output_bytes(self) -> int:
        """The memory its outputs take at the requested size: the float32 batch (images of one size share it with
        image_list)."""
        width, height = self.request.output_size
        return self.images_charged * width * height * 3 * 4


@dataclass
class _Run:
    """One run being carried out: a plan's, or (no plan: nothing to submit) a request collected by its id."""

    fingerprint: str  # what its saved result, job record and run lock are keyed by
    session: Session
    store: RunStore
    plan: Plan | None = None
    output_budget: int | None = None  # bytes its outputs may take; None: `Limits.batch_max_bytes`
    notes: list[str] = field(default_factory=list)
    estimate_usd: float | None = None  # what its submitted job was estimated at when the spending limit was checked
    view: View = field(default_factory=View)  # what it said: its warning line goes with its result

    @classmethod
    def start(cls, fingerprint: str, session: Session, *, plan: Plan | None = None, output_budget: int | None = None) -> _Run:
        """The run with its store: the session's folder, within the cache bounds."""
        notes = list(plan.notes) if plan is not None else []
        return cls(fingerprint, session, session.store(), plan, output_budget, notes)

    @property
    def most_images(self) -> int:
        """The most result images it keeps: what the plan sends as max_images, else the most the model makes."""
        return self.plan.request.max_images_sent if self.plan is not None else MAX_IMAGES_LIMIT


async def generate(
    references: Sequence[Reference],
    request: EditSequentialRequest,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    reference_format: str = "png",
    **session_options,
) -> GenerationResult:
    """One run: `references` (pixels) are encoded and sent before the URLs in `request.images`.

    `session_options` are those of `Session.open`: credentials, base_url, should_stop, timing, limits,
    state_dir (a paid request is recorded and its result saved there; None: in memory) and after_submit.
    `reference_format` is "png" (lossless) or "jpeg" (quality 95, far fewer bytes to upload).
    """
    view = View()
    with heard_by(lambda event: on_progress(view.take(event)) if on_progress is not None else None):
        async with Session.open(**session_options) as session:
            planned = await plan(references, request, session, reference_format=reference_format)
            return await execute(planned, session)


async def plan(references: Sequence[Reference], request: EditSequentialRequest, session: Session, *, reference_format: str) -> Plan:
    """Everything the user can get wrong, before any work or spending; then clean pixels and the fingerprint."""
    request = request.validate(encoded_references=len(references))
    check_choice("reference_format", reference_format, REFERENCE_FORMATS)
    for ref in references:
        check_frame_shape(ref.label, ref.pixels)
    notes = request.count_notes()
    for note in notes:  # before any spending, and kept in view until the end
        pin(note[0].upper() + note[1:], key="count")
    prepared = await _prepare(references, session.stop)
    encoded_differently = reference_format != "png" and references
    fingerprint = request_fingerprint(
        model_id=MODEL_ID,
        base_url=session.base_url,
        settings=request.settings() | ({"reference_format": reference_format} if encoded_differently else {}),
        reference_digests=[p.digest for p in prepared],
        reference_urls=request.urls,
    )
    return Plan(request, prepared, reference_format, fingerprint, notes)


async def paying(plans: Sequence[Plan], session: Session) -> list[Plan]:
    """The plans whose run would submit a job: no saved result and no recorded request of their inputs (a request
    that turns out to be gone is admitted when it is found to be). A question only: records that cannot be read hold
    nothing here, and warn of nothing (each run says its records' trouble itself, and fails closed on it)."""
    records, fingerprints = session.records, [p.fingerprint for p in plans]

    def held() -> set[str]:
        return records.has_saved(fingerprints) | {fp for fp in fingerprints if records.held(fp) is not None}

    try:
        found = await asyncio.to_thread(held)
    except Exception:  # noqa: BLE001 - a question, never a reason to warn or fail
        found = set()
    return [p for p in plans if p.fingerprint not in found]


async def execute(planned: Plan, session: Session, *, output_budget: int | None = None) -> GenerationResult:
    """cache → records → resume or submit → wait → download → save → assemble, one run per distinct inputs at a time.
    `output_budget`: bytes its outputs may take (its share of a list's; None: `Limits.batch_max_bytes`)."""
    run = _Run.start(planned.fingerprint, session, plan=planned, output_budget=output_budget)
    store = run.store
    waiting = "Waiting for an identical run of these inputs to finish, to share its result instead of paying twice…"
    with also_heard_by(run.view.take):
        async with store.exclusive(planned.fingerprint, session.stop, waiting):
            saved, resume_id = await _saved_result(run)
            if saved is not None:
                return saved
            resume_id = resume_id or await _held_request(run)
            result = await _resume(run, resume_id) if resume_id else None
            resumed = result is not None  # paid for by an earlier run: nothing is charged now
            if result is None:
                result = await _settle(run, await _submit(run))
            result = _at_most_asked(run, result)
            files = await _download(run, result)
            # The job's record keeps holding the inputs: a second record if the saved copy is lost.
            await store.save(run.fingerprint, CachedResult(result.request_id, result.urls, result.cost_usd, files))
            return dataclasses.replace(await _deliver(run, result, files), resumed=resumed)


async def collect(request_id: str, session: Session, *, output_budget: int | None = None) -> GenerationResult:
    """A request made anywhere (another machine, RunComfy's own site, before a user folder was lost) collected by
    its id: saved copy → wait → download → save → assemble. Free: nothing is ever submitted, and Stop or the
    deadline end the wait without cancelling the job, which is not this run's to cancel. The saved copy is keyed
    by the request id (`collection_fingerprint`), in the same store and within the same bounds as a run's.
    `output_budget`: bytes its outputs may take (None: `Limits.batch_max_bytes`)."""
    request_id = check_request_id(request_id)
    fingerprint = collection_fingerprint(model_id=MODEL_ID, base_url=session.base_url, request_id=request_id)
    run = _Run.start(fingerprint, session, output_budget=output_budget)
    waiting = f"Waiting for another run collecting request {request_id} to finish, to share its result…"
    with also_heard_by(run.view.take):
        async with run.store.exclusive(fingerprint, session.stop, waiting):
            saved, _ = await _saved_result(run)  # saved files that are unusable: collected again below
            if saved is not None:
                return saved
            result, doubt = _sane_cost(run, _at_most_asked(run, await _collected(run, request_id)))
            await run.session.spending.settled(result.request_id, "done", images=len(result.urls), cost_usd=result.cost_usd, detail=doubt)
            files = await _download(run, result)
            await run.store.save(fingerprint, CachedResult(result.request_id, result.urls, result.cost_usd, files))
            return dataclasses.replace(await _deliver(run, result, files), resumed=True)


async def _collected(run: _Run, request_id: str) -> JobResult:
    """The result of a request submitted elsewhere, waited for while it is queued or running; when RunComfy
    cannot give one, what that means for the person collecting it."""
    say(f"Collecting request {request_id} from RunComfy (free: nothing is submitted)…")  # its state: once RunComfy says
    try:
        return await _wait(run, Job.resume(run.session.client, request_id), leave_running=True)
    except RequestNotFoundError as gone:
        raise RequestNotFoundError(
            f"RunComfy does not know request {request_id}: the id may be mistyped, the request may have expired, or it was "
            "made at another service address (RUNCOMFY_MODEL_API_BASE). Check the id in your RunComfy dashboard. Nothing is charged.",
            http_status=gone.http_status,
            error_code=gone.error_code,
            request_id=request_id,
        ) from None
    except JobFailedError as failed:
        raise JobFailedError(
            f"Request {request_id} failed at RunComfy ({failed.reason or failed}), so it has no images to collect. Nothing is charged now.",
            reason=failed.reason,
            request_id=request_id,
        ) from None
    except JobCancelledError:
        raise JobCancelledError(
            f"Request {request_id} was cancelled at RunComfy, so it has no images to collect.", request_id=request_id
        ) from None


def _at_most_asked(run: _Run, result: JobResult) -> JobResult:
    """The result's first `max_images` files (never more than 15): a listing of more is not downloaded or saved."""
    most = run.most_images
    if len(result.urls) <= most:
        return result
    asked = f" for max_images {most}" if run.plan is not None else ""
    run.notes.append(
        f"the service listed {len(result.urls)} images{asked}; {'only the first was' if most == 1 else f'the first {most} were'} kept"
    )
    return dataclasses.replace(result, urls=result.urls[:most])


async def _saved_result(run: _Run) -> tuple[GenerationResult | None, str | None]:
    """(the saved result, None), or (None, the request id to collect again when the saved files are unusable)."""
    cached = await run.store.saved(run.fingerprint)
    if cached is None:
        return None, None
    if not cached.files:
        return None, cached.request_id
    try:
        images = await _assemble(run, cached.files, "Saved result")
    except DownloadError as damaged:
        warn(f"the saved images of request {cached.request_id} are damaged ({damaged}); collecting them again", key="saved")
        await run.store.drop_saved(run.fingerprint)
        return None, cached.request_id
    say(f"Reused the saved images of request {cached.request_id}: nothing sent, nothing charged.", Phase.DONE)
    new_images = "; change the seed for new images" if run.plan is not None else ""
    notes = (f"saved result reused{new_images}", *run.notes)  # the request is named beside it
    return GenerationResult(cached.request_id, cached.urls, images, cached.cost_usd, notes, run.view.warnings, reused=True), None


async def _held_request(run: _Run) -> str | None:
    """The request these inputs already paid for, by the records; a submit that got no answer holds them."""
    entry = await run.store.held(run.fingerprint)
    if entry is not None and entry.state == "unknown":
        raise OutcomeUnknownError(
            "An earlier submit of exactly these inputs got no answer, so it may be running and charged; to avoid "
            "paying twice it is not sent again. Check your RunComfy dashboard, or change the seed to submit anew "
            f"(this hold ends {UNKNOWN_OUTCOME_HOLD_S // 60} minutes after that submit"
            + (", or when ComfyUI restarts, since the user folder could not keep it)." if run.store.records.in_memory else ").")
        )
    return entry.request_id if entry is not None else None


async def _deliver(run: _Run, result: JobResult, files: list[bytes]) -> GenerationResult:
    """The downloaded files assembled; a file no image can come from ends the request's records."""
    if run.plan is not None and len(result.urls) < run.most_images:  # a request collected by its id: unknown
        run.notes.append(f"the model returned {len(result.urls)} of up to {run.most_images} images")
    try:
        images = await _assemble(run, files, "Result image")
    except DownloadError as unusable:  # a hostile or broken file: collecting this request again cannot help
        await run.store.drop_saved(run.fingerprint)
        await run.store.release(run.fingerprint)
        raise DownloadError(f"{unusable} {_unusable(run, result.request_id)}", request_id=result.request_id) from None
    return GenerationResult(result.request_id, result.urls, images, result.cost_usd, tuple(run.notes), run.view.warnings)


@contextlib.asynccontextmanager
async def _upload_turn(run: _Run) -> AsyncIterator[None]:
    """Hold one of the process's upload slots (`Limits.max_uploads`) from encoding to RunComfy's answer."""
    slots = LOOP_STATE.upload_slots(run.session.limits.max_uploads)
    if not slots.locked():
        await slots.acquire()  # a free slot is taken at once, before any other run can look
    else:
        say("Waiting for a free upload slot (other runs of this ComfyUI are uploading)…", Phase.WAITING)
        await stoppable(slots.acquire(), run.session.stop, f"Stopped while waiting to upload: {NOTHING_SENT}")
    try:
        yield
    finally:
        slots.release()


async def _prepare(references: Sequence[Reference], stop: StopCheck) -> list[PreparedReference]:
    """Clean and fingerprint every reference in worker threads."""
    return await stoppable(prepare_references(references), stop, f"Stopped while preparing the references: {NOTHING_SENT}")


async def _submit(run: _Run) -> Job:
    """The estimate and the spending gate (a reservation within the limits, or nothing is sent), then within an
    upload slot: encode the references and submit once."""
    request, spending = run.plan.request, run.session.spending
    price = await run.session.price()
    if price is not None and plausible(price.usd_per_image):  # a price of 0 is no estimate
        pin(price.estimate(request.max_images_sent), key="cost")
    balance = run.session.balance
    await balance.ticket(run.plan.job, run.session.usd_per_image)  # the balance, beside the spending limits
    job_id = await spending.ticket(run.plan.job, run.session.usd_per_image)
    run.estimate_usd = spending.estimate_of(job_id)
    sending = False
    try:
        _not_held_back(run)
        async with _upload_turn(run):
            balance.check_not_run_out()  # another item's submit was refused for lack of credit meanwhile
            encoded = await _encode(run, run.plan.references)
            run.plan.references = []  # the clean pixels are not needed any more
            balance.check_not_run_out()
            _not_held_back(run)
            sending = True
            job = await _send(run, job_id, request.with_references([e.uri for e in encoded]), _uploading_message(run, encoded))
    except InsufficientBalanceError:  # RunComfy refused it for lack of credit: no job, and nothing more is sent
        balance.ran_out(run.plan.job)
        if not sending:
            await spending.dropped(job_id, "not submitted: the balance ran out")
        raise
    except OutcomeUnknownError:
        balance.submitted(run.plan.job)  # it may be running and charged
        raise
    except BaseException:
        balance.refused(run.plan.job)
        if not sending:  # stopped or failed before anything was sent: the reservation was never used
            await spending.dropped(job_id)
        raise
    balance.submitted(run.plan.job)
    return job


def _not_held_back(run: _Run) -> None:
    """A job of this run cost more than its estimate under a spending limit: what is not sent yet is not sent."""
    if run.session.held_back is not None:
        raise SpendingLimitError(run.session.held_back)


async def _encode(run: _Run, prepared: list[PreparedReference]) -> list[EncodedReference]:
    """Encode every reference in parallel, each within its share of the request body."""
    encoded = await stoppable(
        encode_references(prepared, max_file_bytes=per_reference_byte_limit(len(prepared)), fmt=run.plan.reference_format),
        run.session.stop,
        f"Stopped while encoding the references: {NOTHING_SENT}",
    )
    run.notes.extend(f"{e.label}: {note}" for e in encoded for note in e.notes)
    return encoded


def _uploading_message(run: _Run, encoded: list[EncodedReference]) -> str:
    if not encoded:
        return "Submitting the job to RunComfy…"
    size = sum(len(e.uri.base64) for e in encoded) / 1e6
    count = f"{len(encoded)} {run.plan.reference_format.upper()} reference{'s' if len(encoded) != 1 else ''}"
    return f"Submitting the job to RunComfy: uploading {count}, {size:.1f} MB…"


async def _send(run: _Run, job_id: str, sendable: EditSequentialRequest, message: str) -> Job:
    """Submit once.

    Just before the body's last piece is handed over, the job's record says "outcome unknown": it holds the inputs
    and counts at its estimate, so a process killed before the answer arrives leaves a hold, not an invitation to
    pay again. The answer then replaces it: the request id, or (a definite refusal, or an upload that broke off)
    nothing.
    """
    unanswered = False
    spending = run.session.spending

    async def sending_last_piece() -> None:
        nonlocal unanswered
        unanswered = True
        await spending.may_have_sent(job_id)

    try:
        job = await submit_watching(
            run.session.client,
            sendable,
            should_stop=run.session.stop,
            upload=UploadTracker(on_last_piece=sending_last_piece),
            message=message,
        )
    except OutcomeUnknownError:
        await spending.may_have_sent(job_id)
        raise
    except RunComfyError as refused:  # RunComfy answered, or the upload broke off: no job exists
        await spending.dropped(job_id, f"not submitted: {type(refused).__name__}")
        raise
    except asyncio.CancelledError:  # ComfyUI ended the prompt mid-submit: after the last piece, it may exist
        await (spending.may_have_sent(job_id) if unanswered else spending.dropped(job_id))
        raise
    del sendable  # the service has the references: the encoded copies are freed while we wait
    await spending.submitted(job_id, job.request_id)
    try:
        run.session.after_submit()
    except Exception as exc:  # noqa: BLE001 - a caller's hook cannot end a paid job
        warn(f"the after-submit hook failed ({type(exc).__name__})", key="hook")
    return job


async def _wait(run: _Run, job: Job, *, leave_running: bool = False) -> JobResult:
    """Wait for a job with the run's Stop, deadline and poll schedule (`leave_running`: never cancel it)."""
    timing = run.session.timing
    with also_heard_by(run.session.spending.heard):  # the jobs panel's live state, and the records learn it started
        return await job.wait(
            deadline_s=timing.deadline_s,
            should_stop=run.session.stop,
            poll_schedule=timing.poll_schedule(),
            leave_running=leave_running,
        )


async def _settle(run: _Run, job: Job) -> JobResult:
    """Wait for a job, keeping its record right: a job that ended without results holds its inputs no more."""
    try:
        result = await _wait(run, job)
    except JobFailedError as failed:
        await run.store.release(run.fingerprint)
        await run.session.spending.settled(job.request_id, "failed", detail=failed.reason or str(failed))
        raise
    except JobCancelledError:
        await run.store.release(run.fingerprint)
        await run.session.spending.settled(job.request_id, "cancelled")
        raise
    except (DeadlineExceededError, StopRequested) as ended:
        if ended.cancelled:  # the queued job was cancelled: nothing is left to collect
            await run.store.release(run.fingerprint)
            await run.session.spending.settled(job.request_id, "cancelled")
        raise
    except asyncio.CancelledError:  # ComfyUI ended the prompt; the job cancelled its queued request on the way out
        if job.state == "cancelled":
            await run.store.release(run.fingerprint)
            await run.session.spending.settled(job.request_id, "cancelled")
        raise
    result, doubt = _sane_cost(run, result)
    await run.session.spending.settled(
        result.request_id, "done", images=min(len(result.urls), run.most_images), cost_usd=result.cost_usd, detail=doubt
    )
    run.session.charged(result.request_id, result.cost_usd, run.estimate_usd)
    return result


def _sane_cost(run: _Run, result: JobResult) -> tuple[JobResult, str | None]:
    """A cost no job of this size can have is shown and kept as unknown (the job counts at its estimate); the raw
    value is named in the note and the record."""
    if plausible_cost(result.cost_usd, run.most_images):
        return result, None
    doubt = f"RunComfy reported a cost of {result.cost_usd!r} USD, which cannot be right: it is shown as unknown"
    run.notes.append(doubt)
    return dataclasses.replace(result, cost_usd=None), doubt


async def _resume(run: _Run, request_id: str) -> JobResult | None:
    """Wait for the request these inputs already paid for; None when the service no longer has it."""
    say(f"Resumed request {request_id} (submitted earlier with the same inputs)…", Phase.QUEUED)
    run.notes.append("request resumed")  # the request is named beside it
    try:
        return await _settle(run, Job.resume(run.session.client, request_id))
    except (RequestNotFoundError, AuthenticationError) as gone:
        if isinstance(gone, AuthenticationError) and gone.error_code != "403001":
            raise
    await run.session.spending.settled(request_id, "gone", detail="RunComfy no longer knows this request")
    await run.store.release(run.fingerprint)
    run.notes[-1] = f"request {request_id} is no longer known to RunComfy, so a new one was submitted"
    say(f"Request {request_id} is no longer known to RunComfy; submitting a new one.")
    return None


async def _download(run: _Run, result: JobResult) -> list[bytes]:
    """Every result file as served, in parallel."""
    timing = run.session.timing
    say(f"Downloading 0/{len(result.urls)}", Phase.DOWNLOADING)
    downloader = ResultDownloader(
        UrlPolicy.for_base_url(run.session.base_url),
        max_bytes=run.session.limits.max_download_bytes,
        retry=timing.download_retry,
        read_timeout_s=timing.download_read_timeout_s,
        deadline_s=timing.download_deadline_s,
    )
    fetching = downloader.fetch_all(result.urls, request_id=result.request_id)
    stopped = (
        f"Stopped while downloading the results of request {result.request_id}; the job itself is finished "
        "(and charged). Run the node again with the same inputs to collect them without paying again."
    )
    try:
        return await stoppable(fetching, run.session.stop, stopped, request_id=result.request_id, finished=True)
    except DownloadError as failed:
        if failed.transient:
            again = "Run the node again with the same inputs to collect them without paying again."
        elif failed.collectable:
            again = (
                f"Request {result.request_id} is paid, but this machine refuses to fetch its images. Running the node again "
                "with the same inputs, once they can be fetched from here, collects them without paying again."
            )
        else:
            await run.store.release(run.fingerprint)  # unusable files: collecting this request again cannot help
            raise DownloadError(f"{failed} {_unusable(run, result.request_id)}", request_id=result.request_id) from None
        raise DownloadError(f"{failed} {again}", request_id=result.request_id, transient=failed.transient, collectable=True) from None


def _unusable(run: _Run, request_id: str) -> str:
    """What a finished job whose files cannot be used means for the user's money, and what running again does."""
    if run.plan is None:  # collected by its id: nothing is ever submitted
        return f"Request {request_id} finished at RunComfy and may be charged, but its images cannot be used."
    return (
        f"Request {request_id} finished at RunComfy and may be charged, but its images cannot be used, so it is not kept: "
        "running the node again with the same inputs submits a new job, which is charged again; check your RunComfy "
        "dashboard first."
    )


async def _assemble(run: _Run, files: Sequence[bytes], label: str) -> ImageBatch:
    """The batch of `files` within the memory budget; its notes and warning join the run's."""
    try:
        assembled = await assemble(files, label=label, max_bytes=run.output_budget or run.session.limits.batch_max_bytes)
    except MemoryError:
        raise RunComfyError(
            "There is not enough memory to assemble the result images. They are saved: free some memory "
            "and run the node again with the same inputs to collect them without paying again."
        ) from None
    if assembled.warning:
        warn(assembled.warning, key="memory")
    run.notes.extend(assembled.notes)
    return assembled.images
