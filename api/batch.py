"""Many runs of one node at once, as ComfyUI makes them for the items of a list: one line, one bar, one cost,
and the outcome of every item.

ComfyUI calls an async node once per list item and runs the calls concurrently, so the calls of one node
that overlap in time form a batch: each joins it (`Batch.join(key)`) before its first await, which ComfyUI
gives every item before any of them gets further. Invariants:

- The estimated cost of the whole batch is known before the first submit: every run reports what it would
  pay for (`planned`) and waits until all have, so identical items are counted once.
- One line for the node ("Batch of 24: 6 done, 4 generating, 10 queued at RunComfy, 4 waiting to upload;
  estimated cost up to $2.16") and one fraction for its bar. A batch of one says what a single run says.
- One item's failure does not end the others. A failed or stopped item waits until every item has ended,
  then reports the whole batch: which items failed (request id, reason), or what Stop did to each job.
- Nothing here sends anything: bounding uploads, pacing polls and sharing a 429's backoff are the client's
  (`client.upload_slots`, `client.SharedPace`), so runs outside a batch keep them too.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from .client import Price
from .errors import BatchError, RunComfyError, StopRequested

if TYPE_CHECKING:
    from .pipeline import GenerationResult

MAX_LISTED_FAILURES = 10

PHASES = (  # (phase, how the line names it), in the order the line lists them
    ("done", "done"),
    ("failed", "failed"),
    ("stopped", "stopped"),
    ("downloading", "downloading"),
    ("generating", "generating"),
    ("queued", "queued at RunComfy"),
    ("uploading", "uploading"),
    ("sharing", "waiting for an identical item"),
    ("waiting", "waiting to upload"),
    ("preparing", "preparing"),
)


@dataclass
class Member:
    """One item of a batch."""

    batch: Batch
    number: int  # 1-based position in the list (ComfyUI starts the items in list order)
    phase: str = "preparing"
    phase_when_ended: str = "preparing"
    fraction: float = 0.0
    planned: tuple[str, int] | None = None  # (fingerprint, images charged)
    ended: bool = False
    error: RunComfyError | None = None
    result: GenerationResult | None = None
    _shared: asyncio.Future | None = None  # this item's outcome, for identical items that wait for it

    async def plan(self, fingerprint: str, images_charged: int) -> Awaitable[GenerationResult] | None:
        """Report what this item would pay for; returns once every item has (the batch's estimate is then known).

        When an earlier item of the batch has the same inputs, returns an awaitable of that item's result: identical
        items share one job and one decoded result instead of each reading the saved files again.
        """
        leader = next((m for m in self.batch.members if m is not self and m.planned and m.planned[0] == fingerprint), None)
        self.planned = (fingerprint, images_charged)
        await self.batch._planning_done()
        if leader is None or leader.ended:  # it ended before this item looked: the saved copy serves this one
            return None
        if leader._shared is None:
            leader._shared = asyncio.get_running_loop().create_future()
        self.phase = "sharing"
        self.batch._changed()
        return asyncio.shield(leader._shared)

    @property
    def request_id(self) -> str | None:
        return self.result.request_id if self.result is not None else self.error.request_id if self.error is not None else None

    def progress(self, phase: str, fraction: float) -> None:
        self.phase, self.fraction = phase, fraction
        self.batch._changed()

    def finish(self, *, error: RunComfyError | None = None, result: GenerationResult | None = None) -> None:
        self.ended, self.error, self.result = True, error, result
        self.phase_when_ended = self.phase
        self.phase = "done" if error is None else "stopped" if isinstance(error, StopRequested) else "failed"
        self.fraction = 1.0
        if self._shared is not None and not self._shared.done():
            if result is not None:
                self._shared.set_result(result)
            else:
                self._shared.set_exception(error or RunComfyError("The identical item this one waited for ended without images."))
                self._shared.exception()  # marked as retrieved: each waiting item raises it itself
        self.batch._member_ended()


@dataclass
class Batch:
    key: str
    members: list[Member] = field(default_factory=list)
    price: Price | None = None
    on_change: Callable[[Batch], None] | None = None  # the node shows `line()` and `fraction()`
    price_lookup: Callable[[], Awaitable[Price | None]] | None = None
    resources: dict = field(default_factory=dict)  # what the node shares between items (a client, a progress bar)
    _planned: asyncio.Event = field(default_factory=asyncio.Event)
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    _looking_up: bool = False
    _shown: str = ""
    _stop_reported: bool = False

    _open: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Batch]]] = weakref.WeakKeyDictionary()

    @classmethod
    def join(cls, key: str, number: int | None = None) -> Member:
        """The calling run's place in the open batch of `key`, or in a new one. Call it before the first await.
        `number`: its position in the list, when the host says (else the order of joining, which ComfyUI keeps)."""
        open_here = cls._open.setdefault(asyncio.get_running_loop(), {})
        batch = open_here.get(key)
        if batch is None or batch._settled.is_set() or batch._looking_up:  # a run after planning: a batch of its own
            batch = open_here[key] = cls(key)
        member = Member(batch, number or len(batch.members) + 1)
        batch.members.append(member)
        return member

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def over(self) -> bool:
        """Every item has ended."""
        return all(m.ended for m in self.members)

    # --- what the node shows -----------------------------------------------------------------

    def fraction(self) -> float:
        return sum(m.fraction for m in self.members) / max(1, self.size)

    def line(self) -> str:
        counts = {phase: 0 for phase, _ in PHASES}
        for member in self.members:
            counts[member.phase] = counts.get(member.phase, 0) + 1
        parts = [f"{counts[phase]} {name}" for phase, name in PHASES if counts[phase]]
        line = f"Batch of {self.size}: " + ", ".join(parts)
        if self.price is not None:  # known once every item has planned
            line += f"; estimated cost up to ${self.price.usd_per_image * self.images_charged():.2f}"
        return line

    def images_charged(self) -> int:
        """Images the batch may be charged for: each distinct input once."""
        distinct = {member.planned[0]: member.planned[1] for member in self.members if member.planned is not None}
        return sum(distinct.values())

    def _changed(self) -> None:
        if self.on_change is None or all(m.phase == "preparing" for m in self.members):
            return  # the items of a list join within moments: the line starts once one of them moves on
        line = self.line()
        if line != self._shown:
            self._shown = line
            self.on_change(self)

    # --- coordination -----------------------------------------------------------------------

    async def _planning_done(self) -> None:
        while not self._planned.is_set():  # items plan within milliseconds of each other; a short poll is enough
            if all(m.planned is not None or m.ended for m in self.members) and not self._looking_up:
                self._looking_up = True
                if self.price_lookup is not None and self.size > 1:
                    try:
                        self.price = await self.price_lookup()
                    except Exception:  # noqa: BLE001 - no estimate is better than no run
                        self.price = None
                self._planned.set()
                self._changed()
            else:
                await asyncio.sleep(0.02)

    def _member_ended(self) -> None:
        if self.over:
            self._settled.set()
            open_here = Batch._open.get(asyncio.get_running_loop(), {})
            if open_here.get(self.key) is self:
                del open_here[self.key]
        self._changed()

    async def settled(self) -> None:
        await self._settled.wait()

    # --- how it ended -----------------------------------------------------------------------

    def report_stop_once(self) -> bool:
        """True for the first stopped item to ask: the batch's Stop is shown once, not once per item."""
        first, self._stop_reported = not self._stop_reported, True
        return first

    def outcome(self) -> RunComfyError | None:
        """Once settled: None when every item succeeded, else the one error that describes the whole batch."""
        stopped = [m for m in self.members if isinstance(m.error, StopRequested)]
        failed = [m for m in self.members if m.error is not None and not isinstance(m.error, StopRequested)]
        finished = [m for m in stopped if m.phase_when_ended == "downloading"]  # generated (and charged): collectable
        done = [m for m in self.members if m.error is None] + finished
        if stopped:
            cancelled = sum(1 for m in stopped if m.error.cancelled)
            running = sum(1 for m in stopped if m.request_id and not m.error.cancelled and m not in finished)
            unsent = len(stopped) - cancelled - running - len(finished)
            parts = [
                f"{_count(cancelled, 'queued job')} cancelled before {'it' if cancelled == 1 else 'they'} started" if cancelled else "",
                f"{running} already generating may still be charged" if running else "",
                f"{len(done)} done and saved (run the node again to collect them without paying)" if done else "",
                f"{unsent} not sent" if unsent else "",
                f"{len(failed)} failed" if failed else "",
            ]
            return StopRequested(f"Stopped the batch of {self.size}: " + "; ".join(p for p in parts if p) + ".")
        if failed:
            listed = "; ".join(
                f"item {m.number}"
                + (f" (request {m.request_id})" if m.request_id and m.request_id not in str(m.error) else "")
                + f": {m.error}"
                for m in failed[:MAX_LISTED_FAILURES]
            )
            if len(failed) > MAX_LISTED_FAILURES:
                listed += f"; and {len(failed) - MAX_LISTED_FAILURES} more"
            saved = (
                f" The other {len(done)} are saved: running the node again collects them without paying and retries only these."
                if done
                else ""
            )
            return BatchError(
                f"{len(failed)} of {self.size} items failed.{saved} {listed}",
                failures=[(m.number, m.request_id, m.error) for m in failed],
            )
        return None

    def summary(self) -> str:
        """The final line of a batch where every item succeeded."""
        results = [m.result for m in self.members if m.result is not None]
        paid = {r.request_id: r.cost_usd for r in results if not r.reused}
        reused = sum(1 for r in results if r.reused)
        if not paid:
            return f"Batch of {self.size} done: every item reused saved images (nothing charged now)"
        line = f"Batch of {self.size} done: {len(paid)} job{'s' if len(paid) != 1 else ''}"
        costs = [c for c in paid.values() if c is not None]
        if costs:
            line += f", cost ${sum(costs):.2f}"
        if reused:
            line += f"; {reused} item{'s' if reused != 1 else ''} reused saved images (nothing charged for them now)"
        return line


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"
