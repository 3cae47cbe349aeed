"""Waiting on a task while watching for Stop and a deadline, so neither is noticed late."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

StopCheck = Callable[[], bool]
STOP_CHECK_INTERVAL_S = 0.2


def never_stop() -> bool:
    return False


async def wait_watching(
    task: asyncio.Future,
    should_stop: StopCheck,
    *,
    deadline: float | None = None,
    interval_s: float = STOP_CHECK_INTERVAL_S,
) -> str:
    """Wait for `task`; return "done", "stop" or "deadline" (loop time), whichever comes first.

    The task is left running on "stop" and "deadline": the caller decides what to do with it.
    """
    loop = asyncio.get_running_loop()
    while True:
        if task.done():
            return "done"
        if should_stop():
            return "stop"
        timeout = interval_s
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return "deadline"
            timeout = min(timeout, remaining)
        await asyncio.wait({task}, timeout=timeout)


async def cancel_and_wait(task: asyncio.Future) -> None:
    """Cancel a task and wait until it has really finished, discarding its outcome."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def run_stoppable(coro, should_stop: StopCheck, *, interval_s: float = STOP_CHECK_INTERVAL_S):
    """Run `coro`; if Stop is pressed first, cancel it and return None with `stopped=True`.

    Returns (stopped, result).
    """
    task = asyncio.ensure_future(coro)
    try:
        outcome = await wait_watching(task, should_stop, interval_s=interval_s)
    except BaseException:
        await cancel_and_wait(task)
        raise
    if outcome == "stop":
        await cancel_and_wait(task)
        return True, None
    return False, task.result()
