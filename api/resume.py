"""Never lose a paid result, never pay twice: the fingerprint, the resume journal, the result cache and the run lock.

Invariants this module owns:

1. Local trouble never ends a paid run. Every read and write here is tolerant: a state
   folder that is read-only, full or missing, a `journal.json` that is a folder, damaged
   or of the wrong shape or types, a `results` path that is a file, a cached entry whose
   files are gone: each reads as "nothing saved", and a failed write becomes one warning
   line ("could not save the resume record: …; this run goes on"). Entries that could not
   be written to disk are kept in this process's memory, so a re-run here still resumes.
2. At most one paid job per distinct inputs, also when identical runs overlap. `exclusive`
   holds a lock per fingerprint across the tasks of one process and across processes that
   share the folder (an OS file lock, which the OS releases if the process dies). The second
   run waits, then finds the first one's result in the cache (or its journal entry) and pays nothing.
3. Two records of a paid job, so losing one loses nothing: the journal entry (its request id) stays
   after the result is saved, until it expires; a damaged saved result is set aside and the job
   collected again by its request id.
4. Bounded: the journal keeps at most 200 entries for at most 48 hours; the cache keeps at
   most `max_entries` results and `max_bytes` bytes, evicting the least recently used. A cache
   entry never points outside its own folder.
5. Only fingerprints, request ids, result URLs, costs and result files are written: never the
   token, never the references' pixels.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .client import cost_or_none
from .config import DEFAULT_CACHE_BYTES, MAX_CACHED_RESULTS
from .errors import StopRequested
from .files import MAX_RESULT_FILE_BYTES, FileLock, read_json, read_regular_file, write_atomically
from .shared import MEMORY
from .stop import StopCheck

try:  # POSIX: cross-process locks; elsewhere runs are serialised within one process only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

JOURNAL_NAME = "journal.json"
RESULTS_DIR = "results"
LOCKS_DIR = "locks"
MAX_JOURNAL_ENTRIES = 2000  # every job in flight must fit: twice the distinct items of a list (`batch.MAX_LIST_JOBS`)
FORGOTTEN = "forgotten"  # a tombstone in memory: the disk could not delete the entry
JOURNAL_TTL_S = 48 * 3600  # RunComfy documents no lifetime for requests; two days is plenty for a resume
UNKNOWN_OUTCOME_HOLD_S = 3600
CLOCK_SLACK_S = 24 * 3600
JOURNAL_LOCK_WAIT_S = 2.0  # another process holding the journal longer (suspended, say) is waited out in memory
LOCK_POLL_S = 0.1
_FILE_NAME = re.compile(r"^\d{2,3}\.img$")

Warn = Callable[[str], None]  # called with the store's part of the run's warning line, each time it grows


def request_fingerprint(
    *,
    model_id: str,
    base_url: str,
    settings: Mapping[str, Any],
    reference_digests: Sequence[str],
    reference_urls: Sequence[str],
) -> str:
    """A stable name for "this exact request": every widget value, the references' clean pixels and URLs,
    the model and the service host. Never the token: the key reveals nothing about the account."""
    material = {
        "model": model_id,
        "service": _service_origin(base_url),
        "settings": dict(settings),
        "pixels": list(reference_digests),
        "urls": list(reference_urls),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def collection_fingerprint(*, model_id: str, base_url: str, request_id: str) -> str:
    """The name of "request `request_id` of this model at this service, collected by its id". Its material has
    other keys than `request_fingerprint`'s, so it names no set of inputs (and no set of inputs names it)."""
    material = {"model": model_id, "service": _service_origin(base_url), "collect_request_id": request_id}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _service_origin(base_url: str) -> str:
    """scheme://host[:port] however it was spelled: case, default ports and trailing dots do not make another service."""
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    port = parts.port if parts.port not in (None, {"https": 443, "http": 80}.get(scheme)) else None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def _quietly(work: Callable[[str], Any], fingerprint: str) -> Any:
    try:
        return work(fingerprint)
    except Exception:  # noqa: BLE001 - a question, never a reason to warn or fail
        return None


@dataclass(frozen=True)
class JournalEntry:
    fingerprint: str
    state: str  # "submitted" (request_id known) or "unknown_outcome" (the submit got no answer)
    request_id: str | None
    at: float  # seconds since the epoch
    only_in_memory: bool = False  # the disk refused it: it ends with this process


@dataclass(frozen=True)
class CachedResult:
    request_id: str
    urls: tuple[str, ...]
    cost_usd: float | None
    files: list[bytes]  # empty when the saved files were unusable: only the request id is left to collect again


def _entry_from(fingerprint: str, raw: Any, now: float) -> JournalEntry | None:
    """A journal entry if `raw` has the right shape and types and is still live; anything else is ignored.

    An entry up to a day in the future counts as just made: the clock may have been set back since.
    """
    if not isinstance(raw, dict):
        return None
    state, request_id, at = raw.get("state"), raw.get("request_id"), raw.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        return None
    try:
        at = float(at)
    except OverflowError:
        return None
    if not math.isfinite(at) or at - now > CLOCK_SLACK_S:
        return None
    if state == "submitted" and isinstance(request_id, str) and request_id:
        hold = JOURNAL_TTL_S
    elif state == "unknown_outcome" and request_id is None:
        hold = UNKNOWN_OUTCOME_HOLD_S
    else:
        return None
    if max(0.0, now - at) >= hold:
        return None
    return JournalEntry(fingerprint, state, request_id, at)


class ResumeStore:
    """The resume journal and result cache in one folder (None: nothing is kept on disk, only in memory)."""

    def __init__(
        self,
        directory: Path | None,
        *,
        warn: Warn | None = None,
        max_entries: int = MAX_CACHED_RESULTS,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        max_journal_entries: int = MAX_JOURNAL_ENTRIES,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_journal_entries = max_journal_entries
        self._warn = warn or (lambda message: None)
        self._troubles: list[tuple[str, str]] = []  # (what could not be done, why)
        self._journal_locked_out = False
        self._memory_only = False  # a live journal entry the disk refused: it ends with this process
        self._key = str(self.directory.resolve()) if self.directory is not None else "(memory)"

    # --- warnings ----------------------------------------------------------------------------

    def _trouble(self, what: str, error: BaseException) -> None:
        """Local trouble: one line for the whole run (each `_warn` call replaces the last), and the run goes on."""
        if any(known == what for known, _ in self._troubles):
            return
        detail = f"{type(error).__name__}: {error.strerror}" if isinstance(error, OSError) and error.strerror else type(error).__name__
        self._troubles.append((what, detail))
        where = f" in {self.directory}" if self.directory is not None else ""
        reasons = {why for _, why in self._troubles}
        one_reason = len(reasons) == 1
        listed = [known if one_reason else f"{known} ({why})" for known, why in self._troubles]
        joined = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " or " + listed[-1]
        reason = f" ({reasons.pop()})" if one_reason else ""
        memory_only = (
            " The record of this paid job is kept in memory only: closing ComfyUI before this job is collected"
            " means the next run pays again."
            if self._memory_only
            else ""
        )
        self._warn(f"could not {joined}{where}{reason}; this run goes on.{memory_only}")

    # --- the run lock ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, fingerprint: str, should_stop: StopCheck, on_wait: Callable[[], None]) -> AsyncIterator[None]:
        """Hold the lock of `fingerprint` for the whole run; `on_wait()` once if another run holds it."""
        process_lock = MEMORY.lock((self._key, fingerprint))
        file_lock: FileLock | None = None
        waited = False
        try:
            while True:
                if process_lock.acquire(blocking=False):
                    # Non-blocking and local (open + flock): done on the loop so a cancelled task cannot leave a
                    # lock taken by a worker thread behind.
                    file_lock = self._try_file_lock(fingerprint)
                    if file_lock is not None:
                        break
                    process_lock.release()
                if should_stop():
                    raise StopRequested("Stopped while waiting for an identical run to finish: nothing was sent and nothing is charged.")
                if not waited:
                    waited = True
                    on_wait()
                await asyncio.sleep(LOCK_POLL_S)
            yield
        finally:
            if file_lock is not None:
                file_lock.release()
                process_lock.release()

    def _try_file_lock(self, fingerprint: str) -> FileLock | None:
        """The lock (a no-op one when the folder cannot hold locks), or None while another process holds it."""
        if self.directory is None or fcntl is None:
            return FileLock(None, None)
        try:
            return FileLock.try_acquire(self.directory / LOCKS_DIR / f"{fingerprint}.lock")
        except OSError as error:
            self._trouble("take the lock that keeps another ComfyUI from paying for the same inputs", error)
            return FileLock(None, None)

    # --- the journal -------------------------------------------------------------------------

    def _journal_path(self) -> Path | None:
        return self.directory / JOURNAL_NAME if self.directory is not None else None

    def _read_journal(self) -> dict[str, Any]:
        path = self._journal_path()
        data = read_json(path) if path is not None else None
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def _journal_entry(self, fingerprint: str, journal: Mapping[str, Any] | None = None) -> JournalEntry | None:
        """The newer of the entry on disk (in `journal`, when it was read already) and the one the disk refused
        (kept in memory): a request id that came back after the disk filled up outranks the "outcome unknown"
        written before it, and a forgotten entry the disk could not delete stays forgotten."""
        now = time.time()
        on_disk = _entry_from(fingerprint, (self._read_journal() if journal is None else journal).get(fingerprint), now)
        remembered = MEMORY.journal.get((self._key, fingerprint))
        if remembered is None or (on_disk is not None and on_disk.at > remembered.at):
            return on_disk
        if remembered.state == FORGOTTEN or _entry_from(fingerprint, remembered.__dict__, now) is None:
            return None
        return dataclasses.replace(remembered, only_in_memory=True)

    def _change_journal(self, fingerprint: str, entry: JournalEntry | None) -> None:
        key = (self._key, fingerprint)
        if entry is None:
            MEMORY.journal.pop(key, None)
        path = self._journal_path()
        if path is None or self._journal_locked_out:  # no folder, or another process keeps the journal locked
            if entry is not None:
                MEMORY.journal[key] = entry
            return
        with FileLock.hold(self.directory / LOCKS_DIR / "journal.lock", timeout_s=JOURNAL_LOCK_WAIT_S):
            now = time.time()
            live = {fp: raw for fp, raw in self._read_journal().items() if _entry_from(fp, raw, now) is not None}
            live.pop(fingerprint, None)
            if entry is not None:
                live[fingerprint] = {"state": entry.state, "request_id": entry.request_id, "at": entry.at}
            newest = dict(sorted(live.items(), key=lambda item: item[1]["at"])[-self.max_journal_entries :])
            write_atomically(path, json.dumps({"version": 1, "entries": newest}, indent=1).encode())
        if entry is not None:
            MEMORY.journal.pop(key, None)

    def _journal_refused(self, fingerprint: str, entry: JournalEntry | None, error: Exception) -> None:
        """The disk refused a journal change: the entry lives on in memory (a forgotten one as a tombstone)."""
        MEMORY.journal[(self._key, fingerprint)] = entry or JournalEntry(fingerprint, FORGOTTEN, None, time.time())
        if entry is not None:
            self._memory_only = True
        self._journal_locked_out = isinstance(error, TimeoutError)  # waited once: not again in this run

    async def _tolerant(self, what: str, work: Callable[[], Any], fallback: Callable[[Exception], Any] = lambda error: None) -> Any:
        """Run disk work in a thread. This is the one place its failures are caught: anything it raises becomes
        part of the warning line, and `fallback(error)` the answer; never an error."""
        try:
            return await asyncio.to_thread(work)
        except Exception as error:  # noqa: BLE001 - local trouble never ends a run
            answer = fallback(error)  # first: the warning line says what the fallback did
            self._trouble(what, error)
            return answer

    async def journal_entry(self, fingerprint: str) -> JournalEntry | None:
        return await self._tolerant("read the resume record", lambda: self._journal_entry(fingerprint))

    async def record_submitted(self, fingerprint: str, request_id: str) -> None:
        await self._record(fingerprint, JournalEntry(fingerprint, "submitted", request_id, time.time()))

    async def record_unknown_outcome(self, fingerprint: str) -> None:
        await self._record(fingerprint, JournalEntry(fingerprint, "unknown_outcome", None, time.time()))

    async def forget(self, fingerprint: str) -> None:
        await self._record(fingerprint, None)

    async def _record(self, fingerprint: str, entry: JournalEntry | None) -> None:
        await self._tolerant(
            "save the resume record",
            lambda: self._change_journal(fingerprint, entry),
            lambda error: self._journal_refused(fingerprint, entry, error),
        )

    # --- the result cache --------------------------------------------------------------------

    def _results(self) -> Path | None:
        return self.directory / RESULTS_DIR if self.directory is not None else None

    def _cached(self, fingerprint: str, meta: dict[str, Any]) -> CachedResult | None:
        """The saved result; `meta` receives its meta.json as soon as it is read (for `_set_aside`)."""
        remembered = MEMORY.result((self._key, fingerprint))
        if remembered is not None:
            return remembered
        root = self._results()
        folder = root / fingerprint if root is not None else None
        if folder is None or not folder.is_dir() or folder.is_symlink():
            return None
        meta.update(read_json(folder / "meta.json") or {})
        names, urls, cost, request_id = meta["files"], meta["urls"], meta.get("cost_usd"), meta["request_id"]
        if not (
            isinstance(request_id, str)
            and isinstance(names, list)
            and names
            and all(isinstance(name, str) and _FILE_NAME.match(name) for name in names)
            and isinstance(urls, list)
            and all(isinstance(url, str) for url in urls)
            and (cost is None or cost_or_none(cost) is not None)  # a cost that cannot be true is damage
        ):
            raise ValueError("unexpected shape")
        files = [read_regular_file(folder / name, max_bytes=MAX_RESULT_FILE_BYTES) for name in names]  # never a link
        # Least recently used goes first. Not through a link (where the platform can tell utime so).
        os.utime(folder / "meta.json", follow_symlinks=os.utime not in os.supports_follow_symlinks)
        return CachedResult(request_id, tuple(urls), cost_or_none(cost), files)

    def _set_aside(self, fingerprint: str, meta: dict[str, Any]) -> CachedResult | None:
        """Whatever is wrong with a saved entry, it is set aside; its request id still lets the run collect the paid
        job again."""
        with contextlib.suppress(Exception):
            self._drop_result(fingerprint)
        request_id = meta.get("request_id")
        return CachedResult(request_id, (), None, []) if isinstance(request_id, str) and request_id else None

    def _store_result(self, fingerprint: str, result: CachedResult) -> None:
        root = self._results()
        if root is None:
            raise OSError("no folder for saved results")
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
        try:
            names = [f"{index:02d}.img" for index in range(len(result.files))]
            for name, data in zip(names, result.files, strict=True):
                (staging / name).write_bytes(data)
            meta = {"request_id": result.request_id, "urls": list(result.urls), "cost_usd": result.cost_usd, "files": names}
            (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            target = root / fingerprint
            if target.exists() or target.is_symlink():
                self._discard(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        MEMORY.drop_result((self._key, fingerprint))
        with contextlib.suppress(OSError):  # tidying is best effort: another process may be tidying too
            self._evict(keep=fingerprint)

    @staticmethod
    def _discard(path: Path) -> None:
        """Move `path` out of the way under a unique name, then delete it (safe against a concurrent reader)."""
        aside = path.with_name(f".old-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(path, aside)
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)

    def _drop_result(self, fingerprint: str) -> None:
        MEMORY.drop_result((self._key, fingerprint))
        root = self._results()
        if root is None:
            return
        with contextlib.suppress(OSError):
            self._discard(root / fingerprint)

    def _evict(self, *, keep: str) -> None:
        """Least recently used first, until at most `max_entries` entries and `max_bytes` bytes remain."""
        root = self._results()
        entries: list[tuple[float, int, Path]] = []
        for folder in root.iterdir():
            if folder.name.startswith("."):
                if time.time() - folder.lstat().st_mtime > 3600:  # left behind by a process that died
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            if not folder.is_dir() or folder.is_symlink():
                continue
            size = sum(item.stat().st_size for item in folder.iterdir() if item.is_file())
            used = (folder / "meta.json").stat().st_mtime if (folder / "meta.json").exists() else 0.0
            entries.append((used, size, folder))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        count = len(entries)
        for _, size, folder in entries:
            if count <= self.max_entries and total <= self.max_bytes:
                break
            if folder.name == keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            count -= 1
            total -= size

    def _holding(self, fingerprints: Sequence[str]) -> set[str]:
        journal, root = self._read_journal(), self._results()  # the journal read once, however many there are

        def holds(fingerprint: str) -> bool:
            if MEMORY.result((self._key, fingerprint)) is not None or self._journal_entry(fingerprint, journal) is not None:
                return True
            return root is not None and (root / fingerprint / "meta.json").is_file()

        return {fingerprint for fingerprint in fingerprints if holds(fingerprint)}

    async def holding(self, fingerprints: Sequence[str]) -> set[str]:
        """Which of these inputs have a saved result or a journaled request (read only: nothing is set aside or
        warned of; a store that cannot be read holds nothing)."""
        return await asyncio.to_thread(_quietly, self._holding, fingerprints) or set()

    async def cached(self, fingerprint: str) -> CachedResult | None:
        meta: dict[str, Any] = {}
        return await self._tolerant(
            "read a saved result (it was set aside)",
            lambda: self._cached(fingerprint, meta),
            lambda error: self._set_aside(fingerprint, meta),
        )

    async def peek(self, fingerprint: str) -> CachedResult | None:
        """The saved result as it is, for a look from outside a run (the jobs panel): None when there is none or it
        is damaged. Nothing is set aside or warned of: the next run of these inputs does that, and collects the
        request again."""
        return await asyncio.to_thread(_quietly, lambda key: self._cached(key, {}), fingerprint)

    async def store_result(self, fingerprint: str, result: CachedResult) -> None:
        """Keep the files for a free re-run (in memory, with a warning, when the disk refuses them)."""
        await self._tolerant(
            "save the images for a free re-run",
            lambda: self._store_result(fingerprint, result),
            lambda error: MEMORY.keep_result((self._key, fingerprint), result),
        )

    async def drop_result(self, fingerprint: str) -> None:
        await self._tolerant("set a damaged saved result aside", lambda: self._drop_result(fingerprint))
