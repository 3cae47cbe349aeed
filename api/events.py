"""What a run has to say, handed up to whoever runs it: progress, warnings and lines kept in view.

    events.say("Downloading 2/4", Phase.DOWNLOADING, 0.5)   # anywhere in the library, where it happens
    events.warn("could not save the images …", key="disk")   # something the run goes on despite
    events.pin("Estimated cost: up to $0.09", key="cost")     # kept under every later message

    view = View()
    with events.heard_by(lambda event: show(view.take(event))):   # at the top: the node, a script
        result = await execute(planned, session)

Nothing in the library takes a sink or a `warn` parameter: as with `logging`, each part says what happened where it
happens, and the event goes to whoever listens in the current task (`heard_by`; a task started inside inherits it).
With nobody listening, warnings go to the log and progress nowhere. `View` folds one run's events into the text
under the node and the bar's fraction: every phase carries its share of the bar, so no fraction is written anywhere
else, and the bar never goes back.

Counts with their noun and long values shortened (`plural`, `shorten`) are the words every message uses.

Stop comes the other way, down to the run: one `StopCheck` (a callable answering "has Stop been pressed?"), which
`Latch` makes stay True once it has been True (ComfyUI clears its own flag as it reports Stop), and `stoppable` /
`wait_watching`, which wait for work while watching it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import StopRequested

log = logging.getLogger("runcomfy.seedream")


class Phase(str, enum.Enum):
    """A phase of one run, in the order the list line names them: (name, as the line says it, bar from, bar to)."""

    label: str
    start: float
    end: float

    def __new__(cls, name: str, label: str, start: float, end: float) -> Phase:
        member = str.__new__(cls, name)
        member._value_ = name
        member.label, member.start, member.end = label, start, end
        return member

    DONE = "done", "done", 1.0, 1.0
    FAILED = "failed", "failed", 1.0, 1.0
    STOPPED = "stopped", "stopped", 1.0, 1.0
    DOWNLOADING = "downloading", "downloading", 0.80, 0.95
    GENERATING = "generating", "generating", 0.20, 0.80
    QUEUED = "queued", "queued at RunComfy", 0.15, 0.20
    UPLOADING = "uploading", "uploading", 0.03, 0.15  # encoding, then the submit
    SHARING = "sharing", "waiting for an identical item", 0.03, 0.03
    WAITING = "waiting", "waiting to upload", 0.03, 0.03
    PREPARING = "preparing", "preparing", 0.0, 0.03

    def at(self, within: float) -> float:
        """The bar's fraction `within` (0..1) of the way through this phase."""
        return self.start + (self.end - self.start) * min(1.0, max(0.0, within))

    @property
    def ended(self) -> bool:
        return self in (Phase.DONE, Phase.FAILED, Phase.STOPPED)


def generating_share(elapsed_s: float) -> float:
    """How far through generation to show the bar: the time it takes is unknown, so approach the end smoothly."""
    return 1.0 - math.exp(-max(0.0, elapsed_s) / 90.0)


@dataclass(frozen=True)
class Event:
    """Something the user should see while a run goes on. `key` marks a warning (`warn`) or a line kept in view
    (`pin`): a later one with the same key replaces it. A job's events carry its request id and queue position."""

    phase: Phase | None  # None: the phase goes on
    message: str
    request_id: str | None = None
    queue_position: int | None = None
    elapsed_s: float | None = None
    within: float = 0.0  # how far through `phase`
    warning: str | None = None  # the key of a warning
    pinned: str | None = None  # the key of a line kept in view


@dataclass(frozen=True)
class Progress:
    text: str
    fraction: float  # 0..1 of the whole run
    phase: Phase = Phase.PREPARING


Listener = Callable[[Event], None]
_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("runcomfy_seedream_listener", default=None)


@contextlib.contextmanager
def heard_by(listener: Listener) -> Iterator[None]:
    """Hand every event said in this task (and in the tasks it starts) to `listener` until the block ends."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


@contextlib.contextmanager
def also_heard_by(listener: Listener) -> Iterator[None]:
    """Hand every event said in this block to `listener` as well as to whoever listened before."""
    before = _LISTENER.get()

    def both(event: Event) -> None:
        _give(listener, event)
        _give(before, event)

    with heard_by(both):
        yield


def hand_up(event: Event) -> None:
    """Give `event` to whoever listens."""
    _give(_LISTENER.get(), event)


def _give(listener: Listener | None, event: Event) -> None:
    """Showing progress never ends a run, least of all a paid one; with nobody listening, a warning is logged."""
    if listener is None:
        if event.warning is not None:
            log.warning("RunComfy Seedream: %s", event.message)
        return
    try:
        listener(event)
    except Exception:  # noqa: BLE001
        log.debug("an event listener failed", exc_info=True)


def say(message: str, phase: Phase | None = None, within: float = 0.0) -> None:
    """Show `message`; with `phase`, the run is now `within` (0..1) of the way through it."""
    hand_up(Event(phase, message, within=within))


def warn(part: str, *, key: str) -> None:
    """Something the run goes on despite; a part with the same `key` replaces the earlier one."""
    hand_up(Event(None, part, warning=key))


def pin(line: str, *, key: str) -> None:
    """Show `line` and keep it under every later message."""
    hand_up(Event(None, line, pinned=key))


class View:
    """One run's events as the user sees them: the text (with the run's one warning line and the pinned lines under
    it) and the bar's fraction, which never goes back."""

    def __init__(self) -> None:
        self.fraction = 0.0
        self.phase = Phase.PREPARING
        self.pinned: dict[str, str] = {}
        self._warning_parts: dict[str, str] = {}

    @property
    def warnings(self) -> tuple[str, ...]:
        """The run's warning line, if it has one: its parts in the order they were first said, the spending records' last."""
        parts = sorted(self._warning_parts.items(), key=lambda part: part[0] == "records")
        return ("Warning: " + "; ".join(part for _, part in parts),) if parts else ()

    def take(self, event: Event) -> Progress:
        """What the user sees once `event` has happened."""
        text = event.message
        if event.warning is not None:
            self._warning_parts[event.warning] = event.message
            text = self.warnings[0]
        elif event.pinned is not None:
            self.pinned[event.pinned] = event.message
        if event.phase is not None:
            self.phase = event.phase
            self.fraction = max(self.fraction, event.phase.at(event.within))
        under = [line for line in (*self.warnings, *self.pinned.values()) if line and line != text]
        return Progress("\n".join((text, *under)), self.fraction, self.phase)


def plural(count: int, noun: str) -> str:
    """'1 image', '3 images'."""
    return f"{count} {noun}{'s' if count != 1 else ''}"


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


STOP_CHECK_INTERVAL_S = 0.2  # how often a wait looks at Stop: Stop is noticed within this, in every phase

StopCheck = Callable[[], bool]
T = TypeVar("T")


def never_stop() -> bool:
    return False


class Latch:
    """`check()`, remembered: True from the first time it answers True."""

    def __init__(self, check: StopCheck = never_stop) -> None:
        self._check = check
        self._seen = False

    def __call__(self) -> bool:
        if not self._seen and self._check():
            self._seen = True
        return self._seen

    def set(self) -> None:
        """Stop was seen elsewhere (a progress bar that took ComfyUI's flag)."""
        self._seen = True


class Waited(enum.Enum):
    DONE = "done"
    STOP = "stop"
    DEADLINE = "deadline"


async def wait_watching(task: asyncio.Future, should_stop: StopCheck, *, deadline: float | None = None) -> Waited:
    """Wait for `task` until it is done, Stop is pressed or `deadline` (loop time) passes, whichever is first.
    The task is left running on STOP and DEADLINE: the caller decides what to do with it."""
    loop = asyncio.get_running_loop()
    while True:
        if task.done():
            return Waited.DONE
        if should_stop():
            return Waited.STOP
        timeout = STOP_CHECK_INTERVAL_S
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Waited.DEADLINE
            timeout = min(timeout, remaining)
        await asyncio.wait({task}, timeout=timeout)


async def cancel_and_wait(task: asyncio.Future) -> None:
    """Cancel a task and wait until it has really finished, discarding its outcome."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def stoppable(work: Awaitable[T], should_stop: StopCheck, stopped_message: str, **details: Any) -> T:
    """The result of `work`; when Stop comes first, the work is cancelled and `StopRequested(stopped_message,
    **details)` raised."""
    task = asyncio.ensure_future(work)
    try:
        waited = await wait_watching(task, should_stop)
    except BaseException:
        await cancel_and_wait(task)
        raise
    if waited is Waited.STOP:
        await cancel_and_wait(task)
        raise StopRequested(stopped_message, **details)
    return task.result()
