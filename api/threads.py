"""How every codec step of the package (encoding references, decoding results) uses all cores without blocking
the event loop: PIL's codecs, numpy and hashlib release the GIL on large buffers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def map_in_threads(
    func: Callable[[T], R],
    items: Sequence[T],
    *,
    on_done: Callable[[R, int], None] | None = None,
    name: str = "runcomfy",
) -> list[R]:
    """[func(item) for item in items], computed in parallel; `on_done(result, count_done)` runs on the loop."""
    loop = asyncio.get_running_loop()
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, min(len(items), os.cpu_count() or 1)), thread_name_prefix=name) as pool:

        async def one(item: T) -> R:
            nonlocal done
            result = await loop.run_in_executor(pool, func, item)
            done += 1
            if on_done is not None:
                on_done(result, done)
            return result

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
