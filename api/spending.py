"""Spending limits, and the gate every submit passes: no job is submitted without a reservation within them.

    limits = SpendingLimits.resolve(saved_file)        # RUNCOMFY_SEEDREAM_MAX_USD_PER_RUN / _PER_DAY win when set
    spending = Spending(limits, Records.at(state_dir), service=…, owner=…)
    await spending.admit(jobs, price)             # a list: every distinct item that would pay, all or none
    job_id = await spending.ticket(job, price)    # just before encoding: its reservation, or one made now
    await spending.may_have_sent(job_id)          # the last piece of the submit is about to go
    await spending.submitted(job_id, request_id)  # or .dropped(job_id, …)
    await spending.settled(request_id, status, …) # done, failed, cancelled, gone: what it cost
    await spending.close()                        # reservations never used are dropped

What the records could not do is a warning event (`events.warn`): the run goes on.

"Per run" is one execution (one `pipeline.Session`): a single job or a whole list. "Per day" is today's local
calendar day over every process sharing the user folder: what finished jobs cost, the estimates of those that
may still run or be charged, the live reservations of other runs, and this run's estimate. The daily check and
the reservation are one transaction of the records, so two processes racing under the limit cannot both spend the
same headroom. An estimate is the catalog price × `max_images` of each distinct item, once.

Decisions:
- A price that cannot be looked up, with a limit set: the last catalog price seen within 24 hours; with none, the
  run is refused. A limit that cannot be checked is not a limit.
- A daily limit and records that cannot tell today's spending (they live in memory, or damaged records were set
  aside today): new jobs are refused, and the message says what to do (collecting paid work is unaffected).
- Records another program holds past `lock_wait_s` before anything is sent: the run is refused, with or without a
  limit (going on alone could pay for what another process pays for).
- Collecting paid work (a resumed request, a saved result, an identical run in progress) passes no gate: it is
  never refused. An item found to need a job only later (its earlier request expired) is admitted then.

Whether a catalog price can be trusted to check a limit with (`judge_price`: a catalog that answers 0 or $0.0001 per
image would admit any list under any limit), and what a run does when a job costs more than its estimate
(`overcharge_line`): pure rules, no I/O, no clock.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import proxy_for
from .errors import RecordsError, RunComfyError, SpendingLimitError
from .events import Event, StopCheck, never_stop, plural, warn
from .files import read_json, write_atomically
from .records import FINAL, LEASE_S, LOCK_WAIT_S, NOT_CHARGED, RESERVATION, Busy, Records, Totals, prompt_words, renew_in
from .resume import patiently
from .shared import LIVE

PER_RUN_ENV = "RUNCOMFY_SEEDREAM_MAX_USD_PER_RUN"
PER_DAY_ENV = "RUNCOMFY_SEEDREAM_MAX_USD_PER_DAY"
SETTING = "Settings → RunComfy → Spending limit"
LAST_PRICE_MAX_AGE_S = 24 * 3600.0
MAX_LIMIT_USD = 1_000_000.0
NOTHING_SENT = "Nothing was sent."
AGAIN = "Run the node again to collect that run's result without paying."

PriceLookup = Callable[[], Awaitable[float | None]]  # the catalog price per image, or None when it cannot be had


def limit_value(name: str, value: Any) -> float | None:
    """A limit in USD (None or "": no limit); ValueError naming `name` when it is not an amount from 0 up."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        amount = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a whole number past any float (10**400)
        amount = math.nan
    if isinstance(value, bool) or not math.isfinite(amount) or not 0 <= amount <= MAX_LIMIT_USD:
        raise ValueError(
            f"{name} must be an amount in US dollars from 0 to {MAX_LIMIT_USD:,.0f} (empty: no limit), not {str(value)[:40]!r}"
        )
    return amount + 0.0  # "-0" is 0, never shown as $-0.00


@dataclass(frozen=True)
class SpendingLimits:
    """The most one run and one day may spend, in USD; None: no limit. `sources` says where each came from;
    `problem`, why a limit that was set cannot be read (new jobs are then refused, collecting is not)."""

    per_run_usd: float | None = None
    per_day_usd: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict)  # "per_run_usd"/"per_day_usd" -> SETTING or an env name
    problem: str | None = None

    @property
    def any(self) -> bool:
        return self.per_run_usd is not None or self.per_day_usd is not None

    @classmethod
    def resolve(cls, saved_file: Path | None = None, env: Mapping[str, str] | None = None) -> SpendingLimits:
        """The environment's limits where set, else the saved setting's. A malformed variable, or a saved setting
        that cannot be read where no variable wins, is the limits' `problem`: never taken for "no limit"."""
        env = os.environ if env is None else env
        saved, damage = read_saved(saved_file)
        values: dict[str, float | None] = {}
        sources: dict[str, str] = {}
        problems: list[str] = []
        for key, variable in (("per_run_usd", PER_RUN_ENV), ("per_day_usd", PER_DAY_ENV)):
            if (env.get(variable) or "").strip():
                try:
                    values[key] = limit_value(variable, env[variable])
                except ValueError as bad:
                    problems.append(f"{bad}. Fix or unset the environment variable and restart ComfyUI")
                sources[key] = variable
            elif key in damage:
                problems.append(f"{damage[key]}. Set the limits again in {SETTING} (or delete the file for no limit)")
            elif saved.get(key) is not None:
                values[key], sources[key] = saved[key], SETTING
        said_once = list(dict.fromkeys(problems))  # a damaged file is one problem, not one per limit
        return cls(values.get("per_run_usd"), values.get("per_day_usd"), sources, "; ".join(said_once) or None)

    def where(self, key: str) -> str:
        source = self.sources.get(key, SETTING)
        variable = PER_RUN_ENV if key == "per_run_usd" else PER_DAY_ENV
        if source == SETTING:
            return f"{SETTING}, or {variable}"
        return f"set by {source}, which wins over {SETTING}"


def read_saved(path: Path | None) -> tuple[dict[str, float | None], dict[str, str]]:
    """(the limits saved from ComfyUI's settings, what cannot be read for each); a missing file holds none."""
    saved: dict[str, float | None] = {"per_run_usd": None, "per_day_usd": None}
    if path is None or not (path.exists() or path.is_symlink()):
        return saved, {}
    raw = read_json(path)
    if not isinstance(raw, dict):
        why = f"the saved spending limits {path} cannot be read (damaged, or not a regular file)"
        return saved, dict.fromkeys(saved, why)
    damage: dict[str, str] = {}
    for key in saved:
        try:
            saved[key] = limit_value(key, raw.get(key))
        except ValueError as bad:
            damage[key] = f"the saved spending limits {path} hold a bad value ({bad})"
    return saved, damage


def save_limits(path: Path, per_run_usd: float | None, per_day_usd: float | None) -> None:
    write_atomically(path, json.dumps({"per_run_usd": per_run_usd, "per_day_usd": per_day_usd}).encode())


@dataclass(frozen=True)
class JobPlan:
    """What a job would be, for its estimate and its row in the records."""

    fingerprint: str
    max_images: int
    prompt: str


def describe(jobs: Sequence[JobPlan], usd_per_image: float) -> str:
    """'$4.50 (10 jobs × up to 15 images × $0.030)', or '… (3 jobs, up to 9 images in all × $0.030)'."""
    images = sum(job.max_images for job in jobs)
    usd = images * usd_per_image
    if len({job.max_images for job in jobs}) == 1:
        each = jobs[0].max_images
        how = f"{plural(len(jobs), 'job')} × up to {plural(each, 'image')} × ${usd_per_image:.3f}"
    else:
        how = f"{plural(len(jobs), 'job')}, up to {images} images in all × ${usd_per_image:.3f}"
    return f"${usd:.2f} ({how})"


def over_per_run(limits: SpendingLimits, already_usd: float, jobs: Sequence[JobPlan], usd_per_image: float) -> str | None:
    """Why these jobs break the limit per run (after `already_usd` this run reserved); None when they fit."""
    if limits.per_run_usd is None:
        return None
    usd = already_usd + sum(job.max_images for job in jobs) * usd_per_image
    if usd <= limits.per_run_usd + 1e-9:
        return None
    before = f" on top of ${already_usd:.2f} this run already reserved" if already_usd else ""
    return (
        f"This run may cost up to {describe(jobs, usd_per_image)}{before}; your limit per run is ${limits.per_run_usd:.2f} "
        f"({limits.where('per_run_usd')}). Lower max_images, split the list, or raise the limit. {NOTHING_SENT}"
    )


def over_per_day(limits: SpendingLimits, today: Totals, jobs: Sequence[JobPlan], usd_per_image: float) -> str | None:
    """Why these jobs break the daily limit after what `today` spent; None when they fit."""
    if limits.per_day_usd is None:
        return None
    usd = today.usd + sum(job.max_images for job in jobs) * usd_per_image
    if usd <= limits.per_day_usd + 1e-9:
        return None
    running = f", of which up to ${today.in_flight_usd:.2f} is still running or reserved" if today.in_flight_usd and today.jobs else ""
    return (
        f"Today's spending is {today.line()}{running}, and this run may cost up to {describe(jobs, usd_per_image)}: "
        f"${usd:.2f} in all, over your daily limit of ${limits.per_day_usd:.2f} ({limits.where('per_day_usd')}). "
        f"The day is your local calendar day. Lower max_images, run fewer items, or raise the limit. {NOTHING_SENT}"
    )


class Spending:
    """One run's spending (one execution of a node): its limits, and its rows in the user folder's records.

    `owner` names the run: its reservations and run locks count while its lease lives (`Session.open` renews it)."""

    def __init__(
        self,
        limits: SpendingLimits,
        records: Records,
        *,
        service: str,
        owner: str,
        should_stop: StopCheck = never_stop,
        node_id: str | None = None,
        prompt_id: str | None = None,
        lock_wait_s: float = LOCK_WAIT_S,
        lease_s: float = LEASE_S,
    ) -> None:
        self.limits = limits
        self.records = records
        self.service = service
        self.owner = owner
        self.should_stop = should_stop
        self.node_id = node_id
        self.prompt_id = prompt_id
        self.lock_wait_s = lock_wait_s
        self.lease_s = lease_s
        self.run_usd = 0.0  # what this run reserved, as estimated
        self._reserved: dict[str, str] = {}  # fingerprint -> the id of its reservation, not used yet
        self._estimates: dict[str, float | None] = {}  # job id -> the estimate its limits were checked with
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Future] = set()  # "generating" learned in the background, awaited at close

    async def admit(self, jobs: Sequence[JobPlan], price: PriceLookup) -> None:
        """Reserve every job in `jobs` within the limits, all or none (`SpendingLimitError`: nothing reserved).
        A job identical to one in flight (another run's live reservation or job with its fingerprint) is free: it
        will share that run's result, so it is neither counted nor reserved."""
        async with self._lock:
            await self._admit([job for job in jobs if job.fingerprint not in self._reserved], price, share_identical=True)

    async def ticket(self, job: JobPlan, price: PriceLookup) -> str:
        """The id of the job's reservation, just before anything is encoded: the one made for it, or one made now
        within the limits (`SpendingLimitError`: nothing is sent)."""
        async with self._lock:
            if job.fingerprint not in self._reserved:  # found to need a job only now: it pays, whoever else runs it
                await self._admit([job], price, share_identical=False)
            return self._reserved.pop(job.fingerprint)

    def estimate_of(self, job_id: str) -> float | None:
        """What the job reserved by this run was estimated at when its spending limits were checked (None: no price)."""
        return self._estimates.get(job_id)

    async def _admit(self, jobs: list[JobPlan], price: PriceLookup, *, share_identical: bool) -> None:
        if not jobs:
            return
        if self.limits.problem:  # a limit was set and cannot be read: never taken for no limit
            raise SpendingLimitError(f"Your spending limits cannot be checked: {self.limits.problem}. {NOTHING_SENT}")
        usd_per_image = await self._price(price)
        if usd_per_image is not None and (refusal := over_per_run(self.limits, self.run_usd, jobs, usd_per_image)):
            raise SpendingLimitError(refusal)
        rows = {job.fingerprint: self._reservation(job, usd_per_image) for job in jobs}

        def decide(conn: sqlite3.Connection) -> list[str]:
            """In one transaction: what to reserve, or the refusal."""
            busy = self.records.in_flight(rows, conn) if share_identical else set()
            paying = [job for job in jobs if job.fingerprint not in busy]
            if paying and self.limits.per_day_usd is not None:
                if lost := self.records.lost_today(conn):
                    raise SpendingLimitError(_unknown_day(lost, "Clear the daily limit until tomorrow", self.limits))
                if self.records.folder is not None and self.records.memory_reason:  # other processes cannot be seen
                    again = "Free the disk or fix the folder and restart ComfyUI, or clear the daily limit"
                    raise SpendingLimitError(_unknown_day(self.records.memory_reason, again, self.limits))
            today = self.records.today(conn, besides=[] if share_identical else [job.fingerprint for job in paying])
            if usd_per_image is not None and (refusal := over_per_day(self.limits, today, paying, usd_per_image)):
                raise SpendingLimitError(refusal)
            renew_in(conn, self.owner, self.lease_s)  # its reservations count from the moment they are made
            for job in paying:
                conn.execute(f"INSERT INTO jobs ({', '.join(rows[job.fingerprint])}) VALUES ({', '.join('?' * len(RESERVATION))})",
                             tuple(rows[job.fingerprint].values()))  # fmt: skip
            return [job.fingerprint for job in paying]

        reserved = await self._decide(decide)
        for fingerprint in reserved:
            self._reserved[fingerprint] = rows[fingerprint]["id"]
            self._estimates[rows[fingerprint]["id"]] = rows[fingerprint]["estimate_usd"]
            self.run_usd += rows[fingerprint]["estimate_usd"] or 0.0

    async def _decide(self, decide: Callable[[sqlite3.Connection], list[str]]) -> list[str]:
        """`decide` in one transaction, retried while another process holds the records, watching Stop meanwhile.
        Held past `lock_wait_s`, the run is refused (nothing was sent): under a daily limit in the limit's words."""

        def refuse() -> None:
            if self.limits.per_day_usd is not None:
                raise SpendingLimitError(
                    f"Your daily spending limit cannot be checked: another program keeps the job records "
                    f"{self.records.path} locked (another ComfyUI, or a database tool). Try again in a moment, or clear the "
                    f"daily limit ({self.limits.where('per_day_usd')}). Collecting jobs already paid for still works. {NOTHING_SENT}"
                )

        stopped = f"Stopped while waiting for the job records: {NOTHING_SENT}"
        return await patiently(self.records, decide, self.should_stop, self.lock_wait_s, stopped, refuse)

    def _reservation(self, job: JobPlan, usd_per_image: float | None) -> dict[str, Any]:
        now = time.time()
        estimate = round(usd_per_image * job.max_images, 6) if usd_per_image is not None else None
        values = (uuid.uuid4().hex, job.fingerprint, "reserved", now, now, self.owner, job.max_images, estimate,
                  prompt_words(job.prompt), self.node_id, self.prompt_id)  # fmt: skip
        return dict(zip(RESERVATION, values, strict=True))

    async def _price(self, price: PriceLookup) -> float | None:
        """The catalog price per image; with a limit set, the last sound one seen within 24 hours when the catalog fails
        or reports a price that cannot be right (`price_sanity`), and a refusal when there is none."""
        usd = await price()
        last = None
        if self.limits.any:
            last = await asyncio.to_thread(self.records.last_price, self.service, LAST_PRICE_MAX_AGE_S)
            last = last if plausible(last) else None
        if usd is not None:
            verdict = judge_price(usd, last)
            if verdict.trusted:
                await asyncio.to_thread(self.records.remember_price, self.service, usd)
                return usd
            if not self.limits.any:
                return usd  # only an estimate to show: never remembered, never a limit's
            if verdict.refusal:
                raise SpendingLimitError(
                    f"Your spending limit cannot be checked: {verdict.refusal}. Try again later and check the price on "
                    f"runcomfy.com, or clear the limit ({SETTING}, {PER_RUN_ENV}, {PER_DAY_ENV}). {NOTHING_SENT}"
                )
            warn(verdict.note, key="records")
            return verdict.usd
        if not self.limits.any:
            return None
        usd = last
        if usd is None:
            proxy = proxy_for(self.service + "/")  # the catalog is read through it: it may be what is down
            through = f" (it is read through {proxy}: check that the proxy is running, or unset that variable)" if proxy else ""
            raise SpendingLimitError(
                f"Your spending limit cannot be checked: RunComfy's price for this model could not be read{through}, and none "
                f"was seen in the last 24 hours. Try again in a minute, or clear the limit ({SETTING}, {PER_RUN_ENV}, "
                f"{PER_DAY_ENV}). {NOTHING_SENT}"
            )
        return usd

    # --- what became of a job: recorded, never in the way of paid work ------------------------------

    async def _change(self, job_id: str, **changes: Any) -> None:
        try:
            await asyncio.to_thread(functools.partial(self.records.change, job_id, wait_s=self.lock_wait_s, **changes))
        except Exception as failure:  # noqa: BLE001 - a paid job goes on whatever the records do
            warn(f"the job records could not be updated ({type(failure).__name__})", key="records")

    async def may_have_sent(self, job_id: str) -> None:
        """The last piece of the submit is about to go: from now on the job may exist. It holds its inputs and counts
        at its estimate, also if this process dies before the answer comes. A run that was paused past its lease
        (a laptop asleep mid-upload, the clock moved) checks first that nobody took its inputs over, and that the
        daily limit still has room for it: otherwise nothing is sent (`RecordsError`, `SpendingLimitError`)."""

        def claim(conn: sqlite3.Connection) -> None:
            job = self.records.claim_send(job_id, self.owner, self.lease_s, conn)
            if job is None:
                raise RecordsError(
                    "While this run was held up, another run of the same inputs took them over (it is running, or its "
                    f"result is saved); to never pay twice, this one sent nothing. {AGAIN}"
                )
            if not job.alive and self.limits.per_day_usd is not None and job.estimate_usd:
                today = self.records.today(conn)  # this job counts again now: did others spend its room meanwhile?
                if today.usd > self.limits.per_day_usd + 1e-9:
                    raise SpendingLimitError(
                        f"While this run was held up, other runs spent today's room: today's spending would be "
                        f"${today.usd:.2f}, over your daily limit of ${self.limits.per_day_usd:.2f} "
                        f"({self.limits.where('per_day_usd')}). {NOTHING_SENT}"
                    )

        try:  # the last piece waits for this: records held elsewhere past the wait refuse it, nothing is sent
            await patiently(self.records, claim, self.should_stop, self.lock_wait_s, f"Stopped before the last piece: {NOTHING_SENT}")
        except RunComfyError:
            raise
        except Exception as failure:  # noqa: BLE001 - the records cannot say no: the job goes on, said once
            warn(f"the job records could not be updated ({type(failure).__name__})", key="records")

    async def submitted(self, job_id: str, request_id: str) -> None:
        await self._change(job_id, state="queued", request_id=request_id, hold=1, detail=None)

    async def dropped(self, job_id: str, detail: str = "not submitted") -> None:
        await self._change(job_id, state="dropped", hold=0, detail=detail)

    def heard(self, event: Event) -> None:
        """A job's live state for the jobs panel (its queue position lives in memory only); the records learn once
        that it started generating."""
        status = {"queued": "queued", "generating": "generating"}.get(getattr(event.phase, "value", None))
        if event.request_id is None or status is None:
            return
        known = LIVE.get(event.request_id)
        LIVE[event.request_id] = (status, event.queue_position)
        if status == "generating" and (known is None or known[0] != "generating"):  # written once, in the background
            task = asyncio.ensure_future(self.settled(event.request_id, "generating"))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def settled(
        self,
        request_id: str,
        status: str,
        *,
        images: int | None = None,
        cost_usd: float | None = None,
        detail: str | None = None,
    ) -> None:
        """What became of a job (this run's, or one an earlier run submitted and this one collected)."""
        if status in FINAL:
            LIVE.pop(request_id, None)
        try:
            job = await asyncio.to_thread(functools.partial(self.records.by_request, request_id, wait_s=self.lock_wait_s))
        except Busy:  # held by another program: the records move to memory (one warning line), and learn it there
            await asyncio.to_thread(self.records.write_even_if_busy, lambda conn: None, wait_s=0.0)
            job = await asyncio.to_thread(self.records.by_request, request_id)
        except Exception:  # noqa: BLE001 - reading the records cannot end a paid job
            job = None
        if job is None:
            return
        changes: dict[str, Any] = {"state": status}
        if status in FINAL:
            changes["detail"] = detail
        if images is not None:
            changes["images"] = images
        if cost_usd is not None:
            changes["cost_usd"] = cost_usd
        if status in NOT_CHARGED:
            changes["hold"] = 0
        await self._change(job.id, **changes)

    async def close(self) -> None:
        """Drop the reservations this run never used (its items were collected, reused or failed before submitting),
        once the background writes of the run are done."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        for job_id in list(self._reserved.values()):
            await self.dropped(job_id)
        self._reserved.clear()

    async def today(self) -> Totals | None:
        """Today's totals over every process, or None when the records cannot be read."""
        try:
            return await asyncio.to_thread(self.records.today)
        except Exception:  # noqa: BLE001 - a total that cannot be had is left out of a paid run's last line
            return None


def _unknown_day(problem: str, remedy: str, limits: SpendingLimits) -> str:
    return (
        f"Your daily spending limit cannot be checked: {problem}, so today's spending is unknown. {remedy} "
        f"({limits.where('per_day_usd')}), or check today's spending in your RunComfy dashboard first. Collecting jobs "
        f"already paid for still works. {NOTHING_SENT}"
    )


# Seedream 4.0 costs a few cents per image; no price under half a cent is taken for this model's.
MIN_PLAUSIBLE_USD_PER_IMAGE = 0.005
# A price under this share of the last sound one seen (within the day) is taken for a broken answer, not a price cut.
FAR_BELOW_SHARE = 0.25
# A charge above its estimate by more than this (rounding of what RunComfy reports) is a charge above it.
OVERCHARGE_SLACK_USD = 0.005


def per_image(usd: float) -> str:
    """'$0.030', '$0.0001', '$0': as many digits as a small price needs to be seen for what it is."""
    if usd == 0:
        return "$0"
    if usd >= 0.01:
        return f"${usd:.3f}"
    return f"${usd:.6f}".rstrip("0")


def plausible(usd: float | None) -> bool:
    """A price this model could have on its own: a number of at least `MIN_PLAUSIBLE_USD_PER_IMAGE`."""
    return usd is not None and usd >= MIN_PLAUSIBLE_USD_PER_IMAGE


@dataclass(frozen=True)
class PriceVerdict:
    usd: float | None  # what the limit is checked with; None when refused
    note: str | None = None  # a warning to give once (the reported price was set aside)
    refusal: str | None = None  # why the limit cannot be checked (the caller adds what to do and "Nothing was sent.")
    trusted: bool = True  # the reported price itself is used (and may be remembered as the last sound one)


def judge_price(reported_usd: float, last_sound_usd: float | None) -> PriceVerdict:
    """What a limit is checked with when the catalog reports `reported_usd` per image, the last sound price seen
    being `last_sound_usd` (None: none within the day, or not a plausible one)."""
    last = last_sound_usd if plausible(last_sound_usd) else None
    too_low = not plausible(reported_usd)
    far_below = last is not None and reported_usd < last * FAR_BELOW_SHARE
    if not (too_low or far_below):
        return PriceVerdict(reported_usd)
    reported = f"the price RunComfy reports ({per_image(reported_usd)} per image) does not look right for this model"
    if last is not None:
        return PriceVerdict(
            last,
            note=f"{reported}; your spending limit is checked with the last sound price seen, {per_image(last)} per image",
            trusted=False,
        )
    return PriceVerdict(
        None,
        refusal=f"{reported} (it costs a few cents per image), and no sound price was seen in the last 24 hours",
        trusted=False,
    )


def overcharged(cost_usd: float | None, estimate_usd: float | None) -> bool:
    """A job charged more than the estimate its spending limit was checked with."""
    return cost_usd is not None and estimate_usd is not None and cost_usd > estimate_usd + OVERCHARGE_SLACK_USD


def overcharge_line(request_id: str, cost_usd: float, estimate_usd: float) -> str:
    """The warning a run gives once, at its first job charged above its estimate."""
    return (
        f"request {request_id} cost ${cost_usd:.2f}, more than the ${estimate_usd:.2f} your spending limit was checked with "
        "(RunComfy's price changed meanwhile, or its catalog was wrong); the items of this run not yet sent are not sent"
    )


def overcharge_refusal(request_id: str, cost_usd: float, estimate_usd: float) -> str:
    """Why an item not yet sent is not sent, once a job of its run was charged above its estimate."""
    return (
        f"Not sent: request {request_id} of this run cost ${cost_usd:.2f}, more than the ${estimate_usd:.2f} estimated "
        "when your spending limit was checked, so the items not yet sent were held back to keep within the limit. Check "
        "the price on runcomfy.com, then run the node again: what is done is saved and collected without paying again. "
        "Nothing was sent for this item."
    )
