"""The items of one execution of the node, as ComfyUI hands them over (`INPUT_IS_LIST`): one line, one bar,
one cost estimate, and the outcome of every item.

Invariants:

- Every item is planned (checked, references cleaned, fingerprinted) before anything is sent. Identical
  items are one run: the first of them runs it, the others share its job and its decoded images.
- The estimated cost of the whole batch (each distinct input once) is known before the first submit.
- One line for the node ("Batch of 24: 6 done, 4 generating, 10 queued at RunComfy, 4 waiting to upload;
  estimated cost up to $2.16") and one fraction for its bar. A batch of one says what a single run says.
- One item's failure does not end the others. Once every item has ended, the batch reports once: which
  items failed (request id, reason), or what Stop did to each job.
- Nothing here sends anything: bounding uploads, pacing polls and sharing a 429's backoff are the client's,
  so runs outside a batch keep them too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .balance import BalanceRanOutError, BalanceTooLowError
from .client import Price
from .errors import BatchError, InputError, InsufficientBalanceError, RunComfyError, StopRequested
from .pipeline import GenerationResult, Plan, Reference, Session, execute, paying, plan
from .price_sanity import plausible
from .progress import Phase, Progress, ProgressReporter
from .records import Totals
from .schema import EditSequentialRequest
from .wording import plural

MAX_LISTED_FAILURES = 10
MAX_LIST_JOBS = 1000  # distinct items of one list: every job in flight keeps its record (the records never delete a job that may still run)

LineSink = Callable[[str, float], None]  # (text under the node, fraction of the bar)
OUTPUT_BYTES_PER_PIXEL = 3 * 4  # ComfyUI's IMAGE: float32 RGB


def items_that_fit(budget_bytes: int, width: int, height: int, max_images: int) -> int:
    """How many list items of up to `max_images` images at `width`x`height` the outputs' memory budget holds: ComfyUI
    keeps every item's outputs at once, as float32."""
    return budget_bytes // (max(1, max_images) * width * height * OUTPUT_BYTES_PER_PIXEL)


@dataclass(frozen=True)
class Item:
    """One item of the list: what one run would send."""

    references: Sequence[Reference]
    request: EditSequentialRequest
    reference_format: str = "png"


@dataclass
class Member:
    """One item while the batch runs."""

    number: int  # 1-based position in the list
    phase: Phase = Phase.PREPARING
    fraction: float = 0.0
    plan: Plan | None = None
    leader: Member | None = None  # the earlier identical item whose run this one shares
    result: GenerationResult | None = None
    error: RunComfyError | None = None
    reporter: ProgressReporter | None = None
    output_budget: int | None = None  # its share of the outputs' memory budget, once the list is known to fit

    @property
    def request_id(self) -> str | None:
        return self.result.request_id if self.result is not None else self.error.request_id if self.error is not None else None

    def end(self, *, result: GenerationResult | None = None, error: RunComfyError | None = None) -> None:
        self.result, self.error, self.fraction = result, error, 1.0
        self.phase = Phase.DONE if error is None else Phase.STOPPED if isinstance(error, StopRequested) else Phase.FAILED


class Batch:
    """Run every item; `run()` returns one result per item, or raises the one error that describes the batch."""

    def __init__(self, items: Sequence[Item | RunComfyError], session: Session, on_line: LineSink) -> None:
        self.items = list(items)
        self.session = session
        self.on_line = on_line
        self.members = [Member(number) for number in range(1, len(self.items) + 1)]
        self.price: Price | None = None
        self._shown = ""

    @property
    def size(self) -> int:
        return len(self.members)

    async def run(self) -> list[GenerationResult]:
        try:
            return await self._run()
        except RunComfyError as failure:
            self._show(self._with_warning(str(failure)), self.fraction())  # what went wrong stays under the node
            raise

    async def _run(self) -> list[GenerationResult]:
        await _all(self._plan(member, item) for member, item in zip(self.members, self.items, strict=True))
        leaders = self._link_identical()
        self._share_output_memory(leaders)
        await self._admit(leaders)
        if self.size > 1:
            self.price = await self.session.price()  # the batch's estimate, before the first submit
            self._changed()
        await _all(self._execute(member) for member in leaders)
        for member in self.members:
            if member.leader is not None:
                member.end(result=member.leader.result, error=member.leader.error)
        failure = self.outcome()
        if failure is not None:
            raise failure
        self._show(self._with_warning(self.session.balance.quietly(self.final_line(await self.session.spending.today()))), 1.0)
        return [member.result for member in self.members]

    # --- the steps ------------------------------------------------------------------------------

    async def _plan(self, member: Member, item: Item | RunComfyError) -> None:
        if isinstance(item, RunComfyError):  # its inputs could not even be read
            member.end(error=item)
            return
        try:
            member.plan = await plan(
                item.references, item.request, self.session, self._reporter(member), reference_format=item.reference_format
            )
        except RunComfyError as error:
            member.end(error=error)
            self._changed()

    def _link_identical(self) -> list[Member]:
        """The members that run; every later identical member shares the first one's run."""
        first: dict[str, Member] = {}
        for member in self.members:
            if member.plan is None:
                continue
            leader = first.setdefault(member.plan.fingerprint, member)
            if leader is not member:
                member.leader, member.phase = leader, Phase.SHARING
        return list(first.values())

    def _share_output_memory(self, leaders: list[Member]) -> None:
        """ComfyUI keeps every item's outputs at once: a list's must fit the outputs' memory budget together, checked
        before anything is sent (a re-run collecting saved results needs the same, so it fits too). Each distinct
        item may then use its share of the budget. A single run keeps the whole budget, within which its images
        are fitted as before."""
        if len(leaders) > MAX_LIST_JOBS:
            raise InputError(
                "images",
                f"this list has {len(leaders)} distinct items; one run takes at most {MAX_LIST_JOBS} (each is a paid job, and "
                "each must keep its record until it is collected). Split the list. Nothing was sent.",
            )
        budget = self.session.limits.batch_max_bytes
        needed = sum(member.plan.output_bytes for member in leaders)
        if needed > budget and len(leaders) > 1:
            images = sum(member.plan.images_charged for member in leaders)
            width, height = max((member.plan.request.output_size for member in leaders), key=lambda size: size[0] * size[1])
            most = max(member.plan.images_charged for member in leaders)
            fit = items_that_fit(budget, width, height, most)
            fit_one = items_that_fit(budget, width, height, 1)
            fitting = f"{plural(fit, 'item')} of up to {plural(most, 'image')} fit" + (f" ({fit_one} at max_images 1)" if most > 1 else "")
            raise InputError(
                "max_images",
                f"the outputs of this list would need {-(-needed // 2**20):,} MiB of memory ({plural(len(leaders), 'distinct item')}, "
                f"up to {plural(images, 'image')} in all, at up to {width}x{height} as float32), over the {budget // 2**20:,} MiB "
                f"budget for outputs (ComfyUI keeps every item's images at once): at {width}x{height}, {fitting}. Split the list "
                f"into smaller ones, lower max_images, or raise RUNCOMFY_SEEDREAM_BATCH_MB (now {budget // 2**20}). Nothing was sent.",
            )
        for member in leaders:
            member.output_budget = budget * member.plan.output_bytes // max(1, needed)

    async def _admit(self, leaders: list[Member]) -> None:
        """The spending limits, before anything is encoded: every distinct item that would submit a job is reserved
        at once, or the run is refused (`SpendingLimitError`) and nothing is sent. Items collecting paid work
        (a saved result, a recorded request, an identical run in progress) cost nothing and are never refused."""
        jobs = [planned.job for planned in await paying([member.plan for member in leaders], self.session)]
        if jobs:  # the balance too, read beside the price: a list the account cannot pay for sends nothing
            await self.session.balance.admit(jobs, self.session.usd_per_image)
        warn = leaders[0].reporter.warn if leaders else (lambda line: None)
        await self.session.spending.admit(jobs, self.session.usd_per_image, lambda line: warn(line, key="records"))

    async def _execute(self, member: Member) -> None:
        try:
            member.end(result=await execute(member.plan, self.session, member.reporter, output_budget=member.output_budget))
        except RunComfyError as error:
            member.end(error=error)
        self._changed()

    def _reporter(self, member: Member) -> ProgressReporter:
        def moved(progress: Progress) -> None:
            member.phase, member.fraction = progress.phase, progress.fraction
            if self.size == 1:
                self._show(progress.text, progress.fraction)
            else:
                self._changed()

        member.reporter = ProgressReporter(moved)
        return member.reporter

    # --- what the node shows --------------------------------------------------------------------

    def _show(self, text: str, fraction: float) -> None:
        self._shown = text
        self.on_line(text, fraction)

    def _changed(self) -> None:
        if self.size > 1 and (line := self._with_warning(self.line())) != self._shown:
            self._show(line, self.fraction())

    def _with_warning(self, text: str) -> str:
        """`text` with the one warning line of the batch's local trouble under it (what the items' runs warned of,
        each said once), as a single run keeps its own under every message."""
        parts = dict.fromkeys(
            line.removeprefix("Warning: ") for member in self.members if member.reporter is not None for line in member.reporter.warnings
        )
        return "\n".join([text, "Warning: " + "; ".join(parts)]) if parts and "\nWarning: " not in f"\n{text}" else text

    def fraction(self) -> float:
        return sum(m.fraction for m in self.members) / max(1, self.size)

    def line(self) -> str:
        counts = {phase: sum(1 for m in self.members if m.phase is phase) for phase in Phase}
        line = f"Batch of {self.size}: " + ", ".join(f"{count} {phase.label}" for phase, count in counts.items() if count)
        if self.price is not None and plausible(self.price.usd_per_image):  # a price of 0 is no estimate
            line += f"; estimated cost up to ${self.price.usd_per_image * self.images_charged():.2f}"
        return line

    def images_charged(self) -> int:
        """Images the batch may be charged for: each distinct input once."""
        return sum(m.plan.images_charged for m in self.members if m.plan is not None and m.leader is None)

    def final_line(self, today: Totals | None = None) -> str:
        """What the batch says when every item is done; `today`: the day's spending over every process."""
        if self.size == 1:
            return done_line(self.members[0].result, today)
        return self._batch_done() + (f" (today: {today.line()})" if today is not None and today.jobs else "")

    def _batch_done(self) -> str:
        results = [m.result for m in self.members]
        paid = {r.request_id: r.cost_usd for r in results if r.charged_now}  # only what this run submitted
        reused = sum(1 for r in results if r.reused)
        collected = len({r.request_id for r in results if r.resumed})
        earlier = [
            f"{plural(reused, 'item')} reused saved images" if reused else "",
            f"{plural(collected, 'job')} paid for by an earlier run collected" if collected else "",
        ]
        earlier_part = " and ".join(part for part in earlier if part)
        if not paid:
            if not collected:
                return f"Batch of {self.size} done: every item reused saved images (nothing charged now)"
            return f"Batch of {self.size} done: no new job; {earlier_part} (nothing charged now)"
        line = f"Batch of {self.size} done: {plural(len(paid), 'job')}"
        costs = [c for c in paid.values() if c is not None]
        if costs and len(costs) == len(paid):
            line += f", cost ${sum(costs):.2f}"
        elif costs:
            line += f", cost ${sum(costs):.2f} for {len(costs)} of them ({len(paid) - len(costs)} did not report a cost)"
        if earlier_part:
            line += f"; {earlier_part} (nothing charged for them now)"
        return line

    # --- how it ended ---------------------------------------------------------------------------

    def outcome(self) -> RunComfyError | None:
        """None when every item succeeded, else the one error that describes the whole batch."""
        if self.size == 1:
            return self.members[0].error
        stopped = [m for m in self.members if isinstance(m.error, StopRequested)]
        failed = [m for m in self.members if m.error is not None and not isinstance(m.error, StopRequested)]
        if stopped:
            return self._stopped(stopped, failed)
        if failed:
            return self._failed(failed)
        return None

    def _stopped(self, stopped: list[Member], failed: list[Member]) -> StopRequested:
        """What Stop did to each job (identical items share one job, counted once)."""
        saved = sum(1 for m in self.members if m.error is None)
        finished = sum(1 for m in stopped if m.error.finished)  # done at RunComfy, not downloaded yet
        cancelled = {m.request_id for m in stopped if m.error.cancelled}
        running = {m.request_id for m in stopped if m.request_id and not m.error.cancelled and not m.error.finished}
        unsent = sum(1 for m in stopped if not m.request_id)
        collect = "run the node again to collect them without paying"
        parts = [
            f"{plural(len(cancelled), 'queued job')} cancelled before {'it' if len(cancelled) == 1 else 'they'} started"
            if cancelled
            else "",
            f"{len(running)} not cancelled (already generating, or the cancel was not confirmed) may still be charged" if running else "",
            f"{saved} done and saved" + ("" if finished else f" ({collect})") if saved else "",
            f"{finished} finished at RunComfy but not downloaded ({collect})" if finished else "",
            f"{unsent} not sent" if unsent else "",
            f"{len(failed)} failed: {_listed(failed)}" if failed else "",  # last: its reasons may hold "; " themselves
        ]
        return StopRequested(f"Stopped the batch of {self.size}: " + "; ".join(p for p in parts if p).rstrip(".") + ".")

    def _failed(self, failed: list[Member]) -> BatchError:
        listed = _listed(failed)
        done = self.size - len(failed)
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
            f"{len(failed)} of {self.size} items failed.{saved} {listed}",
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


async def _all(steps) -> None:
    """Run the steps together until every one has ended; then raise the first unexpected error, if any."""
    outcomes = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
