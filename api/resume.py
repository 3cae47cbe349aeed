"""Never lose a paid result, never pay twice: what one run asks of the records, each call off the event loop.

    store = RunStore(Records.at(state_dir), owner, max_entries=…, max_bytes=…)
    async with store.exclusive(fingerprint, should_stop, waiting):   # one run of these inputs at a time, anywhere
        saved = await store.saved(fingerprint)       # the saved result, or its request id when its files are damaged
        job = await store.held(fingerprint)          # the job these inputs are held by: collect it, never pay again
        ...
        await store.save(fingerprint, result)        # the files, for a free re-run

Local trouble never ends a run: anything the records or the results folder refuse becomes part of the run's one
warning line (`events.warn`), and the run goes on (`records.Records` keeps the records in memory when the disk refuses them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn

from .errors import RecordsError, StopRequested
from .events import Phase, StopCheck, say, warn
from .records import LEASE_S, LOCK_WAIT_S, Busy, CachedResult, Job, Records, renew_in

LOCK_POLL_S = 0.1


async def patiently(
    records: Records,
    work: Callable[[Any], Any],
    should_stop: StopCheck,
    wait_s: float,
    stopped: str,
    held_too_long: Callable[[], None] | None = None,
) -> Any:
    """`records.write(work)` before anything is paid, retried while another process holds the database, watching
    Stop meanwhile (`StopRequested(stopped)`). Held past `wait_s`, the run is refused (`held_too_long()` may
    say why in its own words, else `RecordsError`): a run that went on alone could pay for what another process is
    paying for."""
    give_up = time.monotonic() + wait_s
    while True:
        if should_stop():
            raise StopRequested(stopped)
        try:
            return await asyncio.to_thread(records.write, work)
        except Busy:
            if time.monotonic() >= give_up:
                if held_too_long is not None:
                    held_too_long()
                held_elsewhere(records.folder)
            await asyncio.sleep(0.05)


def held_elsewhere(folder: Path | None) -> NoReturn:
    raise RecordsError(
        f"The job records in {folder} are held by another program (another ComfyUI, or a database tool left "
        "open), so whether these inputs are already being paid for cannot be checked; to never pay twice, nothing was "
        "sent. Close that program, or wait a moment, and run the node again."
    )


class RunStore:
    """The records and saved results as one run uses them; `owner` names the run (its lease is renewed elsewhere)."""

    def __init__(
        self,
        records: Records,
        owner: str,
        *,
        max_entries: int,
        max_bytes: int,
        wait_s: float = LOCK_WAIT_S,
        lease_s: float = LEASE_S,
    ) -> None:
        self.records = records
        self.owner = owner
        self.wait_s = wait_s  # how long another process may hold the database before this run goes on in memory
        self.lease_s = lease_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._troubles: list[str] = []

    def _trouble(self, line: str) -> None:
        """Local trouble: one line for the whole run (each warning replaces the last), and the run goes on."""
        if line not in self._troubles:
            self._troubles.append(line)
            warn("; ".join(self._troubles) + "; this run goes on.", key="resume store")

    async def _call(self, what: str | None, work: Callable[[], Any], fallback: Callable[[Exception], Any] = lambda error: None) -> Any:
        """Run records work in a thread. This is the one place its failures are caught: anything it raises becomes
        part of the warning line (`what` could not be done), and `fallback(error)` the answer (a fallback may refuse
        the run, before anything is sent)."""
        try:
            answer = await asyncio.to_thread(work)
        except Exception as error:  # noqa: BLE001 - local trouble never ends a run
            answer = fallback(error)
            if what is not None:
                detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
                self._trouble(f"could not {what} in {self.records.folder} ({detail})")
        if self.records.trouble:
            self._trouble(self.records.trouble)
        return answer

    @contextlib.asynccontextmanager
    async def exclusive(self, fingerprint: str, should_stop: StopCheck, waiting: str) -> AsyncIterator[None]:
        """Hold the run lock of `fingerprint` (in every process sharing the records) for the whole run; say `waiting`
        once if another run holds it. A run that died holds it only until its lease ends."""
        waited = False
        stopped = "Stopped while waiting for an identical run to finish: nothing was sent and nothing is charged."

        def take(conn: Any) -> bool:  # the lease is renewed with it: a lock counts only while its run's lease lives
            renew_in(conn, self.owner, self.lease_s)
            return self.records.try_lock(fingerprint, self.owner, conn)

        while not await patiently(self.records, take, should_stop, self.wait_s, stopped):
            if should_stop():
                raise StopRequested("Stopped while waiting for an identical run to finish: nothing was sent and nothing is charged.")
            if not waited:
                waited = True
                say(waiting, Phase.SHARING)
            await asyncio.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            await self._call(None, lambda: self.records.unlock(fingerprint, self.owner))

    def _unreadable(self, error: Exception) -> None:
        """Before anything is sent, records that cannot be read are never taken for "nothing paid yet"."""
        if isinstance(error, Busy):
            held_elsewhere(self.records.folder)

    async def held(self, fingerprint: str) -> Job | None:
        """The job these inputs are held by (`RecordsError` when that cannot be read: nothing may be sent then)."""
        if self.records.refusal:
            raise RecordsError(self.records.refusal)
        try:
            return await asyncio.to_thread(functools.partial(self.records.held, fingerprint, wait_s=self.wait_s))
        except Busy as busy:
            self._unreadable(busy)
        finally:
            if self.records.trouble:
                self._trouble(self.records.trouble)

    async def release(self, fingerprint: str) -> None:
        """These inputs are held by no job any more: the next run of them submits anew."""
        await self._call("update the job records", lambda: self.records.release(fingerprint))

    async def saved(self, fingerprint: str) -> CachedResult | None:
        """The saved result; whatever is wrong with it, it is set aside, and its request id still lets the run collect
        the paid job again."""

        def set_aside(error: Exception) -> CachedResult | None:
            self._unreadable(error)  # a busy moment is no damage: the saved result stays
            request_id = _quietly(self.records.saved_request, fingerprint)
            _quietly(self.records.drop_saved, fingerprint)
            return CachedResult(request_id, (), None, []) if request_id else None

        return await self._call(
            "read a saved result (it was set aside)", lambda: self.records.saved(fingerprint, wait_s=self.wait_s), set_aside
        )

    async def save(self, fingerprint: str, result: CachedResult) -> None:
        """Keep the files for a free re-run; a folder that refuses them is one warning line (the job's record still
        lets an identical run collect it again, free)."""
        await self._call(
            "save the images for a free re-run",
            lambda: self.records.store(fingerprint, result, max_entries=self.max_entries, max_bytes=self.max_bytes),
        )

    async def drop_saved(self, fingerprint: str) -> None:
        await self._call("set a damaged saved result aside", lambda: self.records.drop_saved(fingerprint))


def _quietly(work: Callable[[str], Any], fingerprint: str) -> Any:
    try:
        return work(fingerprint)
    except Exception:  # noqa: BLE001 - a question, never a reason to warn or fail
        return None
