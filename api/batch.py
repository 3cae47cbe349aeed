"""The items of one execution of a node, as ComfyUI hands them over (`INPUT_IS_LIST`): the one list runner, for the
Seedream node's items (`SeedreamList`) and for requests collected by their ids (`CollectList`).

    results = await SeedreamList(items, session, show).run()    # show(text, fraction): the node's line and bar

Invariants:

- Every item is prepared (checked, references cleaned, fingerprinted; an id checked) before anything is sent.
  Identical items are one run: the first of them runs it, the others share its job and its decoded images.
- The outputs' memory budget is shared by the distinct items, and checked before anything is sent.
- Every distinct item that would pay is admitted by the balance and the spending limits at once, or nothing is sent.
- One line for the node ("Batch of 24: 6 done, 4 generating, 10 queued at RunComfy, 4 waiting to upload;
  estimated cost up to $2.16") and one fraction for its bar. A list of one says what a single run says.
- Each item's events are heard here (`events.heard_by`), folded by its own `View`: this is the one place where what
  the runs say becomes the line under the node.
- One item's failure does not end the others. Once every item has ended, the list reports once: which items
  failed (request id, reason), or what Stop did to each job. The words of each node are pure functions below.
- Nothing here sends anything: bounding uploads, pacing polls and sharing a 429's backoff are the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .balance import BalanceRanOutError, BalanceTooLowError
from .client import Price
from .errors import BatchError, InputError, InsufficientBalanceError, RunComfyError, StopRequested
from .events import Event, Phase, Progress, View, heard_by, plural
from .job import check_request_id
from .pipeline import GenerationResult, Plan, Reference, Session, collect, execute, paying, plan
from .records import Totals
from .schema import EditSequentialRequest
from .spending import plausible

log = logging.getLogger("runcomfy.seedream")
MAX_LISTED_FAILURES = 10
MAX_LIST_JOBS = 1000  # distinct items of one list: every job in flight keeps its record (the records never delete a job that may still run)
OUTPUT_BYTES_PER_PIXEL = 3 * 4  # ComfyUI's IMAGE: float32 RGB

Show = Callable[[str, float], None]  # (text under the node, fraction of the bar)


def items_that_fit(budget_bytes: int, width: int, height: int, max_images: int) -> int:
    """How many list items of up to `max_images` images at `width`x`height` the outputs' memory budget holds: ComfyUI
    keeps every item's outputs at once, as float32."""
    return budget_bytes // (max(1, max_images) * width * height * OUTPUT_BYTES_PER_PIXEL)


def over_memory_budget(plans: list[Plan], needed: int, budget: int) -> str:
    """Why the outputs of these distinct items do not fit the outputs' memory budget, and what fits."""
    images = sum(p.images_charged for p in plans)
    width, height = max((p.request.output_size for p in plans), key=lambda size: size[0] * size[1])
    most = max(p.images_charged for p in plans)
    fit, fit_one = items_that_fit(budget, width, height, most), items_that_fit(budget, width, height, 1)
    fitting = f"{plural(fit, 'item')} of up to {plural(most, 'image')} fit" + (f" ({fit_one} at max_images 1)" if most > 1 else "")
    return (
        f"the outputs of this list would need {-(-needed // 2**20):,} MiB of memory ({plural(len(plans), 'distinct item')}, "
        f"up to {plural(images, 'image')} in all, at up to {width}x{height} as float32), over the {budget // 2**20:,} MiB "
        f"budget for outputs (ComfyUI keeps every item's images at once): at {width}x{height}, {fitting}. Split the list "
        f"into smaller ones, lower max_images, or raise RUNCOMFY_SEEDREAM_BATCH_MB (now {budget // 2**20}). Nothing was sent."
    )


@dataclass(frozen=True)
class Item:
    """One item of the Seedream node's list: what one run would send."""

    references: Sequence[Reference]
    request: EditSequentialRequest
    reference_format: str = "png"


@dataclass
class Member:
    """One item while the list runs."""

    number: int  # 1-based position in the list
    key: str | None = None  # what identical items share: the plan's fingerprint, or the request id
    plan: Plan | None = None
    view: View = field(default_factory=View)
    phase: Phase = Phase.PREPARING
    fraction: float = 0.0
    leader: Member | None = None  # the earlier identical item whose run this one shares
    result: GenerationResult | None = None
    error: RunComfyError | None = None
    output_budget: int | None = None  # its share of the outputs' memory budget, once the list is known to fit

    @property
    def request_id(self) -> str | None:
        return self.result.request_id if self.result is not None else self.error.request_id if self.error is not None else None

    def hear(self, event: Event) -> Progress | None:
        """What the item shows once `event` has happened; None once it has ended (a late word, such as a background
        write of the records, keeps its warning but moves neither its phase nor the bar)."""
        progress = self.view.take(event)
        if self.phase.ended:
            return None
        self.phase, self.fraction = progress.phase, progress.fraction
        return progress

    def end(self, *, result: GenerationResult | None = None, error: RunComfyError | None = None) -> None:
        self.result, self.error, self.fraction = result, error, 1.0
        self.phase = Phase.DONE if error is None else Phase.STOPPED if isinstance(error, StopRequested) else Phase.FAILED


class ListRun:
    """Run every item; `run()` returns one result per item, or raises the one error that describes the list. A node's
    list says what its items are (`prepare`), may admit them before any is sent (`admit`), and has its own words."""

    def __init__(self, items: Sequence[Any], session: Session, show: Show) -> None:
        self.items = list(items)
        self.session = session
        self.show = show
        self.members = [Member(number) for number in range(1, len(self.items) + 1)]
        self._shown = ""

    async def run(self) -> list[GenerationResult]:
        try:
            await self._each(self.members, lambda member: self.prepare(member, self.items[member.number - 1]))
            leaders = self._link_identical()
            self.share_memory(leaders)
            await self.admit(leaders)
            await self._each(leaders, self.start)
            for member in self.members:
                if member.leader is not None:
                    member.end(result=member.leader.result, error=member.leader.error)
            failure = self.outcome()
            if failure is not None:
                raise failure
        except RunComfyError as failure:
            self._say(self._with_warning(str(failure)), self.fraction())  # what went wrong stays under the node
            raise
        self._say(self._with_warning(self.final_line(await self.session.spending.today())), 1.0)
        return [member.result for member in self.members]

    async def _each(self, members: list[Member], work: Callable[[Member], Coroutine[Any, Any, Any]]) -> None:
        """`work(member)` for every member at once, each heard as its member's; a run's `RunComfyError` ends only its
        member, and the first unexpected error is raised once every run has ended."""
        tasks = []
        for member in members:
            with heard_by(lambda event, member=member: self._heard(member, event)):  # the task keeps this listener
                task = asyncio.ensure_future(work(member))
            task.add_done_callback(lambda task, member=member: self._ended(member, task))
            tasks.append(task)
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, RunComfyError):
                raise outcome

    def _ended(self, member: Member, task: asyncio.Future) -> None:
        if task.cancelled():
            return
        outcome = task.exception() or task.result()
        if isinstance(outcome, RunComfyError):
            member.end(error=outcome)
        elif isinstance(outcome, GenerationResult):  # the warnings its run gave are the result's
            member.end(result=dataclasses.replace(outcome, warnings=member.view.warnings))
        else:
            return
        self._changed()

    def _link_identical(self) -> list[Member]:
        """The members that run; every later identical member shares the first one's run."""
        first: dict[str, Member] = {}
        for member in self.members:
            if member.key is None or member.error is not None:
                continue
            leader = first.setdefault(member.key, member)
            if leader is not member:
                member.leader, member.phase = leader, Phase.SHARING
        return list(first.values())

    # --- what a node's list says of its items -----------------------------------------------------

    async def prepare(self, member: Member, item: Any) -> None:
        raise NotImplementedError

    def share_memory(self, leaders: list[Member]) -> None:
        raise NotImplementedError

    async def admit(self, leaders: list[Member]) -> None:
        """Nothing to admit: a list that never pays."""

    def start(self, member: Member) -> Coroutine[Any, Any, GenerationResult]:
        raise NotImplementedError

    def line(self) -> str:
        raise NotImplementedError

    def final_line(self, today: Totals | None) -> str:
        raise NotImplementedError

    def outcome(self) -> RunComfyError | None:
        raise NotImplementedError

    # --- what the node shows --------------------------------------------------------------------

    def _heard(self, member: Member, event: Event) -> None:
        progress = member.hear(event)
        if progress is None:
            return
        if self.single():
            self._say(progress.text, progress.fraction)
        else:
            self._changed()

    def _say(self, text: str, fraction: float) -> None:
        self._shown = text
        try:
            self.show(text, fraction)
        except Exception:  # noqa: BLE001 - showing a line never ends a run, least of all a paid one
            log.debug("showing the list's line failed", exc_info=True)

    def counted(self) -> list[Member]:
        """The members the line and the bar count: every item of the list."""
        return self.members

    def single(self) -> bool:
        """A list of one says what a single run says."""
        return len(self.counted()) == 1

    def _changed(self) -> None:
        if not self.single() and (line := self._with_warning(self.line())) != self._shown:
            self._say(line, self.fraction())

    def _with_warning(self, text: str) -> str:
        """`text` with the one warning line of the list's local trouble under it (what the items' runs warned of,
        each said once), as a single run keeps its own under every message."""
        parts = dict.fromkeys(line.removeprefix("Warning: ") for member in self.members for line in member.view.warnings)
        return "\n".join([text, "Warning: " + "; ".join(parts)]) if parts and "\nWarning: " not in f"\n{text}" else text

    def fraction(self) -> float:
        return sum(m.fraction for m in self.counted()) / max(1, len(self.counted()))


class SeedreamList(ListRun):
    """The Seedream node's items (`Item`, or the error that makes an item unusable: it fails alone)."""

    price: Price | None = None  # the list's estimate, known before the first submit

    async def prepare(self, member: Member, item: Item | RunComfyError) -> None:
        if isinstance(item, RunComfyError):  # its inputs could not even be read
            raise item
        member.plan = await plan(item.references, item.request, self.session, reference_format=item.reference_format)
        member.key = member.plan.fingerprint

    def share_memory(self, leaders: list[Member]) -> None:
        """ComfyUI keeps every item's outputs at once: a list's must fit the outputs' memory budget together, checked
        before anything is sent (a re-run collecting saved results needs the same, so it fits too). Each distinct
        item may then use its share of the budget. A single run keeps the whole budget."""
        if len(leaders) > MAX_LIST_JOBS:
            raise InputError(
                "images",
                f"this list has {len(leaders)} distinct items; one run takes at most {MAX_LIST_JOBS} (each is a paid job, and "
                "each must keep its record until it is collected). Split the list. Nothing was sent.",
            )
        budget = self.session.limits.batch_max_bytes
        needed = sum(member.plan.output_bytes for member in leaders)
        if needed > budget and len(leaders) > 1:
            raise InputError("max_images", over_memory_budget([member.plan for member in leaders], needed, budget))
        for member in leaders:
            member.output_budget = budget * member.plan.output_bytes // max(1, needed)

    async def admit(self, leaders: list[Member]) -> None:
        """The balance and the spending limits, before anything is encoded: every distinct item that would submit a
        job is reserved at once, or the run is refused and nothing is sent. Items collecting paid work (a saved
        result, a recorded request, an identical run in progress) cost nothing and are never refused."""
        jobs = [planned.job for planned in await paying([member.plan for member in leaders], self.session)]
        with heard_by(lambda event: self._heard(leaders[0], event)) if leaders else contextlib.nullcontext():
            if jobs:  # the balance too, read beside the price: a list the account cannot pay for sends nothing
                await self.session.balance.admit(jobs, self.session.usd_per_image)
            await self.session.spending.admit(jobs, self.session.usd_per_image)
        if len(self.members) > 1:
            self.price = await self.session.price()  # the list's estimate, before the first submit
            self._changed()

    def start(self, member: Member) -> Coroutine[Any, Any, GenerationResult]:
        return execute(member.plan, self.session, output_budget=member.output_budget)

    def line(self) -> str:
        usd_per_image = self.price.usd_per_image if self.price is not None and plausible(self.price.usd_per_image) else None
        return batch_line(self.members, usd_per_image)

    def final_line(self, today: Totals | None) -> str:
        return self.session.balance.quietly(batch_done(self.members, today))

    def outcome(self) -> RunComfyError | None:
        return batch_outcome(self.members)


class CollectList(ListRun):
    """Requests collected by their ids: free throughout, nothing is submitted and no job is cancelled."""

    async def run(self) -> list[GenerationResult]:
        if not self.items:
            raise InputError("request_id", "received an empty list. Connect a node that outputs at least one request id.")
        for number, value in enumerate(self.items, start=1):  # every id, before anything is sent
            try:
                check_request_id(value)
            except InputError as unusable:
                if len(self.items) == 1:
                    raise
                raise InputError("request_id", f"(item {number} of {len(self.items)}) {str(unusable).split(': ', 1)[1]}") from None
        return await super().run()

    async def prepare(self, member: Member, item: object) -> None:
        member.key = check_request_id(item)

    def share_memory(self, leaders: list[Member]) -> None:
        for member in leaders:
            member.output_budget = self.session.limits.batch_max_bytes // len(leaders) if len(leaders) > 1 else None

    def start(self, member: Member) -> Coroutine[Any, Any, GenerationResult]:
        return collect(member.key, self.session, output_budget=member.output_budget)

    def counted(self) -> list[Member]:
        """Each request once, however many items name it."""
        return [member for member in self.members if member.leader is None]

    def line(self) -> str:
        return collect_line(self.counted())

    def final_line(self, today: Totals | None) -> str:
        return collect_done(self.counted(), today)

    def outcome(self) -> RunComfyError | None:
        return collect_outcome(self.counted())


# --- the Seedream node's words: pure functions of its members -----------------------------------------


def batch_line(members: list[Member], usd_per_image: float | None) -> str:
    """ "Batch of 24: 6 done, 4 generating, …; estimated cost up to $2.16" (each distinct input counted once)."""
    counts = {phase: sum(1 for m in members if m.phase is phase) for phase in Phase}
    line = f"Batch of {len(members)}: " + ", ".join(f"{count} {phase.label}" for phase, count in counts.items() if count)
    if usd_per_image is not None:
        images = sum(m.plan.images_charged for m in members if m.plan is not None and m.leader is None)
        line += f"; estimated cost up to ${usd_per_image * images:.2f}"
    return line


def batch_done(members: list[Member], today: Totals | None = None) -> str:
    """What the list says when every item is done; `today`: the day's spending over every process."""
    if len(members) == 1:
        return done_line(members[0].result, today)
    size = len(members)
    results = [m.result for m in members]
    paid = {r.request_id: r.cost_usd for r in results if r.charged_now}  # only what this run submitted
    reused = sum(1 for r in results if r.reused)
    collected = len({r.request_id for r in results if r.resumed})
    earlier = [
        f"{plural(reused, 'item')} reused saved images" if reused else "",
        f"{plural(collected, 'job')} paid for by an earlier run collected" if collected else "",
    ]
    earlier_part = " and ".join(part for part in earlier if part)
    day = f" (today: {today.line()})" if today is not None and today.jobs else ""
    if not paid:
        if not collected:
            return f"Batch of {size} done: every item reused saved images (nothing charged now){day}"
        return f"Batch of {size} done: no new job; {earlier_part} (nothing charged now){day}"
    line = f"Batch of {size} done: {plural(len(paid), 'job')}"
    costs = [c for c in paid.values() if c is not None]
    if costs and len(costs) == len(paid):
        line += f", cost ${sum(costs):.2f}"
    elif costs:
        line += f", cost ${sum(costs):.2f} for {len(costs)} of them ({len(paid) - len(costs)} did not report a cost)"
    if earlier_part:
        line += f"; {earlier_part} (nothing charged for them now)"
    return line + day


def batch_outcome(members: list[Member]) -> RunComfyError | None:
    """None when every item succeeded, else the one error that describes the whole list."""
    if len(members) == 1:
        return members[0].error
    stopped = [m for m in members if isinstance(m.error, StopRequested)]
    failed = [m for m in members if m.error is not None and not isinstance(m.error, StopRequested)]
    if stopped:
        return _stopped(members, stopped, failed)
    if failed:
        return _failed(members, failed)
    return None


def _stopped(members: list[Member], stopped: list[Member], failed: list[Member]) -> StopRequested:
    """What Stop did to each job (identical items share one job, counted once)."""
    saved = sum(1 for m in members if m.error is None)
    finished = len({m.request_id for m in stopped if m.error.finished})  # done at RunComfy, not downloaded yet
    cancelled = {m.request_id for m in stopped if m.error.cancelled}
    running = {m.request_id for m in stopped if m.request_id and not m.error.cancelled and not m.error.finished}
    unsent = sum(1 for m in stopped if not m.request_id)
    collect = f"run the node again to collect {'it' if saved + finished == 1 else 'them'} without paying"
    parts = [
        f"{plural(len(cancelled), 'queued job')} cancelled before {'it' if len(cancelled) == 1 else 'they'} started" if cancelled else "",
        f"{len(running)} not cancelled (already generating, or the cancel was not confirmed) may still be charged" if running else "",
        f"{saved} done and saved" + ("" if finished else f" ({collect})") if saved else "",
        f"{finished} finished at RunComfy but not downloaded ({collect})" if finished else "",
        f"{unsent} not sent" if unsent else "",
        f"{len(failed)} failed: {_listed(failed)}" if failed else "",  # last: its reasons may hold "; " themselves
    ]
    return StopRequested(f"Stopped the batch of {len(members)}: " + "; ".join(p for p in parts if p).rstrip(".") + ".")


def _failed(members: list[Member], failed: list[Member]) -> BatchError:
    listed = _listed(failed)
    done = len(members) - len(failed)
    others = "The other item is saved" if done == 1 else f"The other {done} are saved"
    these = "this one" if len(failed) == 1 else "these"
    saved = f" {others}: running the node again collects {'it' if done == 1 else 'them'} without paying and retries only {these}."
    saved = saved if done else ""
    if any(isinstance(m.error, InsufficientBalanceError) for m in failed):  # running again only meets the same refusal
        kept = f" {others}." if done else ""
        saved = f"{kept} Your RunComfy balance ran out: top it up at runcomfy.com first, then run the node again" + (
            f" (it collects the saved {'item' if done == 1 else 'items'} without paying and sends only {these})." if done else "."
        )
    return BatchError(
        f"{len(failed)} of {len(members)} items failed.{saved} {listed}",
        failures=[(m.number, m.request_id, m.error) for m in failed],
    )


def _listed(failed: list[Member]) -> str:
    """The failed members with their reasons, each with its request id unless the reason names it already."""
    noted = [(m, f" (request {m.request_id})" if m.request_id and m.request_id not in str(m.error) else "") for m in failed]
    return failure_list((m.number, note, _reason(m.error)) for m, note in noted)


def _reason(error: RunComfyError) -> str:
    """What an item's error says in the list: an item the balance stopped in a few plain words."""
    if isinstance(error, BalanceRanOutError):
        return "not sent: the balance ran out"
    if isinstance(error, InsufficientBalanceError) and not isinstance(error, BalanceTooLowError):
        return "refused by RunComfy: the balance ran out (no job was created, nothing was charged)"
    return str(error)


def failure_list(failures: Iterable[tuple[int, str, str]]) -> str:
    """Failed items (number, a note such as " (request …)", what went wrong); items that failed alike are named
    together ("items 1-12: max_images: …"), at most MAX_LISTED_FAILURES reasons, then how many items more."""
    by_reason: dict[tuple[str, str], list[int]] = {}
    for number, note, reason in failures:
        by_reason.setdefault((note, reason), []).append(number)
    shown = list(by_reason.items())[:MAX_LISTED_FAILURES]
    listed = "; ".join(f"{item_numbers(numbers)}{note}: {reason}" for (note, reason), numbers in shown)
    more = sum(len(numbers) for numbers in by_reason.values()) - sum(len(numbers) for _, numbers in shown)
    return listed + (f"; and {plural(more, 'more item')}" if more else "")


def item_numbers(numbers: list[int]) -> str:
    """ "item 3", "items 1-12", "items 2, 5-7"."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    spans = ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
    return ("item " if len(numbers) == 1 else "items ") + spans


def done_line(result: GenerationResult, today: Totals | None = None) -> str:
    """What a single run says when it is done: images, request, cost, the day's spending, notes, and its warning line."""
    count = result.images.count
    summary = f"Done: {plural(count, 'image')}, request {result.request_id}"
    if not result.charged_now:
        paid = f"paid ${result.cost_usd:.2f} when it ran" if result.cost_usd is not None else "paid for by an earlier run"
        summary += f", {paid} (nothing charged now)"
    elif result.cost_usd is not None:
        summary += f", cost ${result.cost_usd:.2f}"
    details = list(result.notes)
    if result.images.padded and not result.images.shrunk:
        height, width = result.images.array().shape[1:3]
        details.append(f"sizes differ: padded onto {width}x{height} in the batch; image_list keeps native sizes")
    if details:
        summary += " (" + "; ".join(details) + ")"
    if today is not None and today.jobs:
        summary += f" (today: {today.line()})"
    return "\n".join([summary, *result.warnings])


# --- the collect-by-id node's words: pure functions of its distinct requests ------------------------------

_COLLECT_LABELS = {Phase.PREPARING: "checking"}  # before RunComfy's first answer about the request


def collect_line(entries: list[Member]) -> str:
    counts = {phase: sum(1 for entry in entries if entry.phase is phase) for phase in Phase}
    listed = ", ".join(f"{count} {_COLLECT_LABELS.get(phase, phase.label)}" for phase, count in counts.items() if count)
    return f"Collecting {len(entries)} requests (free, nothing is submitted): {listed}"


def collect_done(entries: list[Member], today: Totals | None = None) -> str:
    """What the collection says when every id is collected; `today`: the day's spending over every process."""
    results = [entry.result for entry in entries]
    if len(results) == 1:
        return done_line(results[0], today)
    costs = [result.cost_usd for result in results]
    paid = f", paid ${sum(costs):.2f} when they ran" if None not in costs else ""
    images = sum(result.images.count for result in results)
    reused = sum(1 for result in results if result.reused)
    saved = f"; {reused} from saved copies" if reused else ""
    day = f" (today: {today.line()})" if today is not None and today.jobs else ""
    return f"Collected {len(results)} requests: {plural(images, 'image')}{paid} (nothing charged now){saved}{day}"


def collect_outcome(entries: list[Member]) -> RunComfyError | None:
    """None when every id was collected, else the one error that describes them all."""
    if len(entries) == 1:
        return entries[0].error
    stopped = [entry for entry in entries if isinstance(entry.error, StopRequested)]
    failed = [entry for entry in entries if entry.error is not None and entry not in stopped]
    done = len(entries) - len(stopped) - len(failed)
    collected = f" {done} collected and saved." if done else ""
    if stopped:
        ids = ", ".join(entry.key for entry in stopped)
        couldnt = f" {len(failed)} could not be collected." if failed else ""
        return StopRequested(
            f"Stopped waiting: {len(stopped)} of {len(entries)} requests not collected yet ({ids}); they go on at RunComfy: "
            f"run this node again to collect them.{collected}{couldnt}"
        )
    if not failed:
        return None
    listed = failure_list((entry.number, "", str(entry.error)) for entry in failed)
    return BatchError(
        f"{len(failed)} of {len(entries)} requests could not be collected.{collected} {listed}",
        failures=[(entry.number, entry.key, entry.error) for entry in failed],
    )
