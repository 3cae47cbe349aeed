"""Requests collected by their ids, as ComfyUI hands them to a node (`INPUT_IS_LIST`): one line, one bar, the
outcome of every id. Free throughout: nothing is submitted and no job is cancelled (see `pipeline.collect`).

Invariants:

- Every id is checked before anything is sent; the first unusable one is an `InputError` naming `request_id`.
- An id given twice is collected once, and its items share the result.
- Each distinct id's images are fitted within its share of the outputs' memory budget.
- One id says what its run says. A list has one line ("Collecting 3 requests: 1 done, 2 generating") and ends
  with one line, or with one error that says which ids were not collected and why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from .batch import LineSink, done_line, failure_list
from .errors import BatchError, InputError, RunComfyError, StopRequested
from .job import check_request_id
from .pipeline import GenerationResult, Session, collect
from .progress import Phase, Progress, ProgressReporter
from .records import Totals
from .wording import plural

_LABELS = {Phase.PREPARING: "checking"}  # before RunComfy's first answer about the request


async def collect_all(request_ids: Sequence[object], session: Session, on_line: LineSink) -> list[GenerationResult]:
    """One result per item of `request_ids`, or the one error that describes what went wrong."""
    return await Collection(request_ids, session, on_line).run()


@dataclass
class _Entry:
    """One distinct request id while it is collected."""

    request_id: str
    number: int  # the first item (1-based) that names it
    phase: Phase = Phase.PREPARING
    fraction: float = 0.0
    result: GenerationResult | None = None
    error: RunComfyError | None = None


class Collection:
    def __init__(self, request_ids: Sequence[object], session: Session, on_line: LineSink) -> None:
        self.request_ids = list(request_ids)
        self.session = session
        self.on_line = on_line
        self.entries: dict[str, _Entry] = {}
        self._shown = ""

    async def run(self) -> list[GenerationResult]:
        try:
            ids = self._checked()
            for number, request_id in enumerate(ids, start=1):
                self.entries.setdefault(request_id, _Entry(request_id, number))
            share = self.session.limits.batch_max_bytes // len(self.entries) if len(self.entries) > 1 else None
            outcomes = await asyncio.gather(*(self._collect(entry, share) for entry in self.entries.values()), return_exceptions=True)
            unexpected = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None)
            if unexpected is not None:
                raise unexpected
            failure = self.outcome()
            if failure is not None:
                raise failure
        except RunComfyError as failure:
            self.on_line(str(failure), self.fraction())  # what went wrong stays under the node
            raise
        self.on_line(self.final_line(await self.session.spending.today()), 1.0)
        return [self.entries[request_id].result for request_id in ids]

    def _checked(self) -> list[str]:
        if not self.request_ids:
            raise InputError("request_id", "received an empty list. Connect a node that outputs at least one request id.")
        if len(self.request_ids) == 1:
            return [check_request_id(self.request_ids[0])]
        ids = []
        for number, value in enumerate(self.request_ids, start=1):
            try:
                ids.append(check_request_id(value))
            except InputError as unusable:
                raise InputError("request_id", f"(item {number} of {len(self.request_ids)}) {str(unusable).split(': ', 1)[1]}") from None
        return ids

    async def _collect(self, entry: _Entry, output_budget: int | None) -> None:
        report = ProgressReporter(lambda progress: self._moved(entry, progress))
        try:
            entry.result = await collect(entry.request_id, self.session, report, output_budget=output_budget)
        except RunComfyError as error:
            entry.error = error
        entry.phase = Phase.DONE if entry.error is None else Phase.STOPPED if isinstance(entry.error, StopRequested) else Phase.FAILED
        entry.fraction = 1.0
        self._changed()

    # --- what the node shows --------------------------------------------------------------------

    def _moved(self, entry: _Entry, progress: Progress) -> None:
        entry.phase, entry.fraction = progress.phase, progress.fraction
        if len(self.entries) == 1:
            self.on_line(progress.text, progress.fraction)
        else:
            self._changed()

    def _changed(self) -> None:
        if len(self.entries) > 1 and (line := self.line()) != self._shown:
            self._shown = line
            self.on_line(line, self.fraction())

    def fraction(self) -> float:
        return sum(entry.fraction for entry in self.entries.values()) / max(1, len(self.entries))

    def line(self) -> str:
        counts = {phase: sum(1 for entry in self.entries.values() if entry.phase is phase) for phase in Phase}
        listed = ", ".join(f"{count} {_LABELS.get(phase, phase.label)}" for phase, count in counts.items() if count)
        return f"Collecting {len(self.entries)} requests (free, nothing is submitted): {listed}"

    def final_line(self, today: Totals | None = None) -> str:
        """What the collection says when every id is collected; `today`: the day's spending over every process."""
        results = [entry.result for entry in self.entries.values()]
        if len(results) == 1:
            return done_line(results[0], today)
        costs = [result.cost_usd for result in results]
        paid = f", paid ${sum(costs):.2f} when they ran" if None not in costs else ""
        images = sum(result.images.count for result in results)
        reused = sum(1 for result in results if result.reused)
        saved = f"; {reused} from saved copies" if reused else ""
        day = f" (today: {today.line()})" if today is not None and today.jobs else ""
        return f"Collected {len(results)} requests: {plural(images, 'image')}{paid} (nothing charged now){saved}{day}"

    # --- how it ended ---------------------------------------------------------------------------

    def outcome(self) -> RunComfyError | None:
        """None when every id was collected, else the one error that describes them all."""
        entries = list(self.entries.values())
        if len(entries) == 1:
            return entries[0].error
        stopped = [entry for entry in entries if isinstance(entry.error, StopRequested)]
        failed = [entry for entry in entries if entry.error is not None and entry not in stopped]
        done = len(entries) - len(stopped) - len(failed)
        collected = f" {done} collected and saved." if done else ""
        if stopped:
            ids = ", ".join(entry.request_id for entry in stopped)
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
            failures=[(entry.number, entry.request_id, entry.error) for entry in failed],
        )
