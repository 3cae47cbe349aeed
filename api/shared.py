"""What one process shares across runs, nodes and batches: four named places, each with a public `reset()`.

- `LOOP_STATE`, per event loop (asyncio objects belong to one loop): the pace towards each service (status
  polls of every job in flight together, and one backoff for all submits after a 429), the upload slots,
  and the catalog price lookups in flight.
- `PRICES`: the catalog price of each service for an hour, and when a lookup last failed.
- `LIVE`: the queue position and phase of each job this process waits on, for the jobs panel.
- `ENCODED`: the latest encoded references, so a re-run with the same references uploads at once.

Nothing here is keyed by or holds the token. `reset_all()` empties every place (tests use it).

Beside them, `tls_context()` is built once and never changes: every connection pool of the process verifies
certificates with it, instead of loading the certificate bundle again for each pool (about 20 ms of CPU on the
event loop each time).

Its cores too: `map_in_threads` is how every codec step (encoding references, decoding results) uses all of them
without blocking the event loop: PIL's codecs, numpy and hashlib release the GIL on large buffers.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

PRICE_TTL_S = 3600.0
PRICE_RETRY_AFTER_FAILURE_S = 60.0


class SharedPace:
    """Towards one service: status polls one every `status_interval_s` at most, however many jobs are in flight,
    and the backoff after a 429 on a submit, one for every submit (a batch's items wait together)."""

    def __init__(self) -> None:
        self._last_status = float("-inf")
        self._status_turns = asyncio.Lock()
        self._submits_not_before = 0.0

    async def status_turn(self, interval_s: float) -> None:
        """Wait until `interval_s` has passed since the last status poll was actually sent, one caller at a time:
        paced from the real send time, so a late wake-up never shortens the next gap."""
        loop = asyncio.get_running_loop()
        async with self._status_turns:
            wait = self._last_status + interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_status = loop.time()

    async def submit_turn(self) -> None:
        loop = asyncio.get_running_loop()
        while (wait := self._submits_not_before - loop.time()) > 0:
            await asyncio.sleep(wait)

    def back_off_submits(self, seconds: float) -> None:
        self._submits_not_before = max(self._submits_not_before, asyncio.get_running_loop().time() + seconds)


@dataclass
class _OneLoop:
    paces: dict[str, SharedPace] = field(default_factory=dict)
    slots: dict[int, asyncio.Semaphore] = field(default_factory=dict)
    lookups: dict[Any, asyncio.Future] = field(default_factory=dict)


class LoopState:
    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _OneLoop] = weakref.WeakKeyDictionary()

    def _here(self) -> _OneLoop:
        return self._loops.setdefault(asyncio.get_running_loop(), _OneLoop())

    def pace(self, base_url: str) -> SharedPace:
        return self._here().paces.setdefault(base_url.rstrip("/"), SharedPace())

    def upload_slots(self, count: int) -> asyncio.Semaphore:
        """The bound on uploads (with their encodes and submits) in flight at once."""
        return self._here().slots.setdefault(count, asyncio.Semaphore(count))

    def lookup(self, key: Any, start: Callable[[], Awaitable[Any]]) -> asyncio.Future:
        """The lookup of `key` in flight, or a new one: callers asking at once share one."""
        lookups = self._here().lookups
        running = lookups.get(key)
        if running is None or running.done():
            running = lookups[key] = asyncio.ensure_future(start())
        return running

    def reset(self) -> None:
        self._loops.clear()


class PriceCache:
    def __init__(self) -> None:
        self._prices: dict[Any, tuple[float, Any]] = {}  # (base URL, model) -> (fetched at, price)
        self._failures: dict[Any, float] = {}  # (base URL, model) -> when a lookup last failed

    def get(self, key: Any) -> Any | None:
        cached = self._prices.get(key)
        return cached[1] if cached is not None and time.monotonic() - cached[0] < PRICE_TTL_S else None

    def failed_recently(self, key: Any) -> bool:
        """Many runs at once must not each knock on a catalog that is failing."""
        failed = self._failures.get(key)
        return failed is not None and time.monotonic() - failed < PRICE_RETRY_AFTER_FAILURE_S

    def remember(self, key: Any, price: Any) -> None:
        self._prices[key] = (time.monotonic(), price)

    def remember_failure(self, key: Any) -> None:
        self._failures[key] = time.monotonic()

    def reset(self) -> None:
        self._prices.clear()
        self._failures.clear()


class LiveJobs(dict):
    """Request id -> (queued/generating, queue position) of the jobs this process is waiting on, for the jobs panel."""

    def reset(self) -> None:
        self.clear()


ENCODED_CACHE_BYTES = 256 * 2**20


class EncodedCache:
    """The most recently used encoded references of this process, so that a re-run with the same references
    (a new seed or prompt) starts its upload at once instead of encoding them again.

    An entry is a `references.EncodedFile` (anything with `nbytes`), keyed by everything that decides its bytes: the digest of the clean
    pixels, the format, the per-file byte limit (a different share of the request body encodes again)
    and, for PNG, the zlib settings. It holds the base64 file and the notes of its encoding, so that a
    downscale is reported on every run that sends it; never pixels, labels or credentials.

    At most `max_bytes` of base64 are kept; the least recently used entries go first. Thread-safe
    (encodes run in worker threads), and two runs that need the same file at once encode it once:
    the second waits for the first. `reset()` empties it and resets `hits` and `misses`.
    """

    def __init__(self, max_bytes: int = ENCODED_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self._pending: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    @property
    def nbytes(self) -> int:
        """Base64 bytes held."""
        with self._lock:
            return self._bytes

    def reset(self) -> None:
        """Forget every entry and reset the counts (an encode in flight is kept when it finishes)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def get_or_encode(self, key: Hashable, encode: Callable[[], Any]) -> Any:
        """The entry for `key`, made by `encode()` (outside the lock) when there is none."""
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = threading.Event()
                    self.misses += 1
                    break
            pending.wait()  # another thread is encoding these pixels; then look again
        try:
            entry = encode()
            with self._lock:
                self._keep(key, entry)
        finally:
            with self._lock:
                del self._pending[key]
            pending.set()
        return entry

    def _keep(self, key: Hashable, entry: Any) -> None:
        if entry.nbytes > self.max_bytes:
            return
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings httpx would make for a new pool (its certificate bundle, or SSL_CERT_FILE / SSL_CERT_DIR
    as the process started with them), made once."""
    return httpx.create_ssl_context()


LOOP_STATE = LoopState()
PRICES = PriceCache()
LIVE = LiveJobs()
ENCODED = EncodedCache()


def reset_all() -> None:
    """Forget everything the process shares (between tests; never while a run is going on)."""
    from .records import Records  # the databases this process opened: a test's user folder is its own

    for place in (LOOP_STATE, PRICES, LIVE, ENCODED, Records):
        place.reset()


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
