"""Stop: one check that latches, and one way to wait for work while watching it.

A run is given one `StopCheck` (a callable answering "has Stop been pressed?"). `Latch` makes any
check stay True once it has been True, so a flag that its owner clears (ComfyUI clears its own as it
reports Stop) is still seen by every later question. `stoppable` awaits work and, when Stop comes first,
cancels the work and raises `StopRequested` with the message the caller gives for that moment.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .errors import StopRequested

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
