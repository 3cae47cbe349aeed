"""The ledger: every job this ComfyUI submitted, in the user folder, shared by every process that uses it.

One JSON object per line of `ledger.jsonl`, each the latest snapshot of one entry (a later line with the same
`entry` replaces an earlier one). Lines are appended under an exclusive file lock, so two processes writing at
once lose nothing; past `2 × max_entries` lines the file is compacted to the newest `max_entries` entries
(rewritten atomically, under the same lock). An entry holds no token and no pixels: when, the request id, the
state, image counts, the estimated and actual cost, the prompt's first words, the node and prompt ids, and the
fingerprint of the inputs (so an identical run in progress is known to be free).

A line that cannot be read (damage, a bad hand edit) is kept as it is and counted: `LedgerView.damaged` lists
the line numbers, and what that means for a daily limit is `spending`'s decision. A write the disk refuses is
kept in memory for this process (`shared.MEMORY`), merged into every read here and written with the next append
that succeeds: this process still counts it; `LedgerUnavailable` tells the caller, who decides.

Days and months are local calendar days. An entry dated after today (the clock was set back) counts as today:
setting the clock back cannot hide spending.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import math
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import FileLock, read_regular_file, write_atomically
from .shared import MEMORY

LEDGER_NAME = "ledger.jsonl"
LOCK_NAME = ".ledger.lock"
MAX_USD = 1_000_000.0  # the most one entry can cost or be estimated at: more is a bad hand edit, not a job
MAX_ENTRIES = 5000  # a few hundred bytes each: about 1.5 MB, months of heavy use
ENTRY_BYTES = 400  # about what one line takes: past 2 × max_entries of them, the file is compacted
MAX_LEDGER_BYTES = 16 * 2**20  # far beyond 2 × MAX_ENTRIES lines; a larger file is damage
LOCK_WAIT_S = 10.0
PROMPT_WORDS_CHARS = 60
DETAIL_CHARS = 300
_DATA_URI = re.compile(r"data:[^\s\"'<>]*")  # an image sent inline: never kept in the ledger
RESERVATION_TTL_S = 6 * 3600.0  # a reservation older than this never became a job (its process is gone)

STATUSES = ("reserved", "queued", "generating", "done", "failed", "cancelled", "unknown", "dropped")  # dropped: never submitted
IN_FLIGHT = frozenset({"reserved", "queued", "generating", "unknown"})
NOT_CHARGED = frozenset({"failed", "cancelled", "dropped"})
FINAL = frozenset({"done", "failed", "cancelled", "dropped"})
RANK = {"reserved": 0, "unknown": 1, "queued": 2, "generating": 3, "done": 4, "failed": 4, "cancelled": 4, "dropped": 4}


class LedgerUnavailable(Exception):
    """The ledger file could not be read or written; `str()` says why, in words for the user."""


def _money(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_USD:  # NaN fails too
        raise ValueError("not an amount")
    return float(value)


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
        raise ValueError("not a count")
    return value


def _text(value: Any, limit: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("not text")
    return value[:limit]


def _is_date(value: Any) -> bool:
    """Whether `value` is epoch seconds of a local calendar day (a time past year 9999 or before year 1 is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    try:
        local_day(value)
    except (OverflowError, OSError, ValueError):
        return False
    return True


def prompt_words(prompt: str) -> str:
    """The prompt's first words, at most `PROMPT_WORDS_CHARS` characters, on one line."""
    words = " ".join(prompt.split())
    if len(words) <= PROMPT_WORDS_CHARS:
        return words
    cut = words[:PROMPT_WORDS_CHARS].rsplit(" ", 1)[0] or words[:PROMPT_WORDS_CHARS]
    return cut + "…"


@dataclass(frozen=True)
class LedgerEntry:
    entry: str
    time: float  # epoch seconds of the reservation (or submit)
    status: str
    max_images: int
    estimate_usd: float | None = None
    cost_usd: float | None = None
    images: int | None = None  # how many the job returned, once done
    request_id: str | None = None
    prompt: str = ""
    node_id: str | None = None
    prompt_id: str | None = None
    fingerprint: str | None = None
    detail: str | None = None  # why it failed, or what became of it
    pid: int = 0
    host: str = ""
    updated: float = 0.0

    @classmethod
    def reserve(
        cls, *, fingerprint: str, max_images: int, estimate_usd: float | None, prompt: str, node_id: str | None, prompt_id: str | None
    ) -> LedgerEntry:
        now = time.time()
        return cls(
            uuid.uuid4().hex, now, "reserved", max_images, estimate_usd, prompt=prompt_words(prompt), node_id=node_id,
            prompt_id=prompt_id, fingerprint=fingerprint, pid=os.getpid(), host=socket.gethostname(), updated=now,
        )  # fmt: skip

    def changed(self, **changes: Any) -> LedgerEntry:
        if changes.get("detail") is not None:  # RunComfy's reason for a failure: it may quote the request
            changes["detail"] = _DATA_URI.sub("data:…", str(changes["detail"]))[:DETAIL_CHARS]
        return dataclasses.replace(self, **changes, updated=time.time())

    @classmethod
    def from_json(cls, raw: Any) -> LedgerEntry:
        """The entry a line holds; ValueError for anything that is not one (wrong types, a negative cost, NaN…)."""
        if not isinstance(raw, dict) or raw.get("v") != 1:
            raise ValueError("not a ledger entry")
        status, entry, when = raw.get("status"), raw.get("entry"), raw.get("time")
        if status not in STATUSES or not isinstance(entry, str) or not entry:
            raise ValueError("not a ledger entry")
        if not _is_date(when):
            raise ValueError("no time")
        updated = raw.get("updated")
        if updated is not None and not _is_date(updated):
            raise ValueError("no time")
        return cls(
            entry=entry[:64],
            time=float(when),
            status=status,
            max_images=_count(raw.get("max_images")) or 0,
            estimate_usd=_money(raw.get("estimate_usd")),
            cost_usd=_money(raw.get("cost_usd")),
            images=_count(raw.get("images")),
            request_id=_text(raw.get("request_id"), 128),
            prompt=_text(raw.get("prompt"), PROMPT_WORDS_CHARS + 1) or "",
            node_id=_text(raw.get("node_id"), 64),
            prompt_id=_text(raw.get("prompt_id"), 64),
            fingerprint=_text(raw.get("fingerprint"), 128),
            detail=_text(raw.get("detail"), DETAIL_CHARS),
            pid=raw["pid"] if type(raw.get("pid")) is int and 0 < raw["pid"] < 2**31 else 0,
            host=_text(raw.get("host"), 255) or "",
            updated=float(updated or when),
        )

    def to_json(self) -> str:
        return json.dumps({"v": 1, **dataclasses.asdict(self)}, separators=(",", ":"), allow_nan=False)

    def counted_usd(self, now: float, alive: Callable[[LedgerEntry], bool]) -> float:
        """What it counts towards spending: the actual cost once done (else its estimate), its estimate while it may
        be running or charged, nothing once failed or cancelled, and a reservation only while its run is alive."""
        if self.status in NOT_CHARGED:
            return 0.0
        if self.status == "done" and self.cost_usd is not None:
            return self.cost_usd
        if self.status == "reserved" and not alive(self):
            return 0.0
        return self.estimate_usd or 0.0

    def in_flight(self, now: float) -> bool:
        """A job that may still run (or be charged), or a reservation whose run is alive."""
        return self.status in IN_FLIGHT and (self.status != "reserved" or run_alive(self, now))

    def is_job(self) -> bool:
        """Submitted (or may have been) and not known to cost nothing: what "over N jobs" counts."""
        return self.status not in NOT_CHARGED and self.status != "reserved"


def run_alive(entry: LedgerEntry, now: float | None = None) -> bool:
    """Whether the run that made a reservation may still submit it: its process lives (on this machine), and it
    is younger than `RESERVATION_TTL_S`."""
    now = time.time() if now is None else now
    if now - entry.updated > RESERVATION_TTL_S:
        return False
    if entry.host != socket.gethostname() or entry.pid <= 0:
        return True  # another machine's (a shared folder): trusted until it expires
    try:
        os.kill(entry.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, as another user's process
    return True


@dataclass(frozen=True)
class Totals:
    usd: float = 0.0
    jobs: int = 0
    in_flight_usd: float = 0.0  # of `usd`: estimates of jobs that may still be running, and live reservations

    def line(self) -> str:
        """'$1.47 over 12 jobs'; with no job yet, what runs starting now have reserved."""
        if not self.jobs and self.usd:
            return f"${self.usd:.2f} reserved by runs about to submit"
        return f"${self.usd:.2f} over {self.jobs} job{'s' if self.jobs != 1 else ''}"


def local_day(epoch: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(epoch).date()


def totals(entries: Iterable[LedgerEntry], *, since: datetime.date, now: float, alive: Callable[[LedgerEntry], bool] = run_alive) -> Totals:
    """What the entries dated on or after `since` (local days) add up to: a later date counts too."""
    usd = in_flight = 0.0
    jobs = 0
    for entry in entries:
        if local_day(entry.time) < since:
            continue
        counted = entry.counted_usd(now, alive)
        usd += counted
        in_flight += counted if entry.status in IN_FLIGHT else 0.0
        jobs += entry.is_job()
    return Totals(round(usd, 6), jobs, round(in_flight, 6))


def today_totals(entries: Iterable[LedgerEntry], now: float | None = None) -> Totals:
    now = time.time() if now is None else now
    return totals(entries, since=local_day(now), now=now)


def month_totals(entries: Iterable[LedgerEntry], now: float | None = None) -> Totals:
    now = time.time() if now is None else now
    return totals(entries, since=local_day(now).replace(day=1), now=now)


@dataclass(frozen=True)
class LedgerView:
    """The ledger as read: one entry per id (the latest), newest first, and the lines that could not be read."""

    path: Path | None
    entries: tuple[LedgerEntry, ...] = ()
    damaged: tuple[int, ...] = ()  # 1-based numbers of the lines that are not entries
    problem: str | None = None  # the whole file could not be read: why

    def by_request(self, request_id: str) -> LedgerEntry | None:
        return next((e for e in self.entries if e.request_id == request_id), None)

    def damage(self) -> str | None:
        """What is wrong with the file, in words for the user; None when every line was read."""
        if self.problem:
            return f"the spending ledger {self.path} cannot be read ({self.problem})"
        if self.damaged:
            shown = ", ".join(map(str, self.damaged[:5])) + (", …" if len(self.damaged) > 5 else "")
            lines = f"{len(self.damaged)} line{'s' if len(self.damaged) != 1 else ''}"
            return f"{lines} of the spending ledger {self.path} cannot be read (line {shown})"
        return None


def _keep_newest(entries: dict[str, LedgerEntry], entry: LedgerEntry) -> None:
    """Keep `entry` unless a newer snapshot of it is kept: wherever a late write put it, the newest one wins."""
    known = entries.get(entry.entry)
    if known is None or known.updated <= entry.updated:
        entries[entry.entry] = entry


def parse(data: bytes) -> tuple[dict[str, LedgerEntry], list[int], list[str]]:
    """(entries by id, the numbers of the damaged lines, the damaged lines as they are)."""
    entries: dict[str, LedgerEntry] = {}
    damaged: list[int] = []
    kept: list[str] = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = LedgerEntry.from_json(json.loads(line))
        except (ValueError, TypeError, RecursionError):
            damaged.append(number)
            kept.append(line[:4096])
            continue
        _keep_newest(entries, entry)
    return entries, damaged, kept


class Ledger:
    """The ledger in `folder` (None: this process's memory only)."""

    def __init__(self, folder: Path | None, *, max_entries: int = MAX_ENTRIES) -> None:
        self.folder = folder
        self.path = folder / LEDGER_NAME if folder is not None else None
        self.max_entries = max_entries
        self._memory_key = str(folder) if folder is not None else ""

    @property
    def _unwritten(self) -> dict[str, LedgerEntry]:
        """Entries the disk refused (or, with no folder, every entry): kept for the process's lifetime."""
        return MEMORY.ledger.setdefault(self._memory_key, {})

    def read(self) -> LedgerView:
        """Blocking: the file and what this process could not write to it, merged (newest snapshot wins)."""
        entries, damaged, problem = {}, [], None
        if self.path is not None:
            try:
                entries, damaged, _ = parse(read_regular_file(self.path, max_bytes=MAX_LEDGER_BYTES))
            except FileNotFoundError:
                pass
            except OSError as unreadable:
                problem = unreadable.strerror or type(unreadable).__name__
        for entry in list(self._unwritten.values()):
            _keep_newest(entries, entry)
        ordered = sorted(entries.values(), key=lambda e: (e.time, e.updated), reverse=True)
        return LedgerView(self.path, tuple(ordered), tuple(damaged), problem)

    def write(self, entries: Iterable[LedgerEntry], decide: Callable[[LedgerView], Any] | None = None) -> Any:
        """Blocking: under the ledger's lock, `decide(view)` (when given) sees the ledger as it is; unless it raises,
        `entries` (and what it returns, when a list of entries) are appended. Returns what `decide` returned.
        When the disk refuses, the entries are kept in memory and `LedgerUnavailable` says why (after `decide`
        ran: a caller that must not go on without a written entry lets its exception through)."""
        entries = list(entries)
        if self.path is None:
            decided = decide(self.read()) if decide else None
            self._keep_in_memory(entries + (decided if isinstance(decided, list) else []))
            return decided
        try:
            with FileLock.hold(self.folder / LOCK_NAME, timeout_s=LOCK_WAIT_S):
                view = self.read()
                decided = decide(view) if decide else None
                entries += decided if isinstance(decided, list) else []
                try:
                    self._append(view, entries)
                except OSError as refused:
                    self._keep_in_memory(entries)
                    raise LedgerUnavailable(f"the spending ledger {self.path} cannot be written ({refused.strerror or refused})") from None
                return decided
        except TimeoutError:
            if decide is None:  # a record, not a decision: kept for the next write
                self._keep_in_memory(entries)
            raise LedgerUnavailable(f"another ComfyUI process keeps the spending ledger {self.path} locked") from None
        except OSError as refused:  # the folder or the lock file
            self._keep_in_memory(entries)
            raise LedgerUnavailable(f"the spending ledger {self.path} cannot be written ({refused.strerror or refused})") from None

    def unkeep(self, entries: Iterable[LedgerEntry]) -> None:
        """Forget entries kept in memory that will never be used (a refused reservation)."""
        for entry in entries:
            self._unwritten.pop(entry.entry, None)

    def _keep_in_memory(self, entries: Iterable[LedgerEntry]) -> None:
        for entry in entries:
            self._unwritten[entry.entry] = entry

    def _append(self, view: LedgerView, entries: list[LedgerEntry]) -> None:
        """Append the new entries and any this process could not write before; compact when the file is long.
        Only ever into a regular file (a FIFO or device is refused, never waited on), and all or nothing: a write
        the disk cuts short is taken back, so no torn line is left and the entries stay in memory."""
        pending = list(self._unwritten.values()) + entries
        if not pending:
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = "".join(entry.to_json() + "\n" for entry in pending).encode()
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            size = info.st_size
            compact = size > min(MAX_LEDGER_BYTES // 2, 2 * self.max_entries * ENTRY_BYTES)
            if not compact:
                if size and not self._ends_with_newline(fd, size):
                    lines = b"\n" + lines  # a hand edit left the last line open: never join ours to it
                try:
                    done = 0
                    while done < len(lines):  # a full disk may take part of a write before it refuses the rest
                        written = os.write(fd, lines[done:])
                        if written <= 0:
                            raise OSError(errno.ENOSPC, "the disk took nothing")
                        done += written
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise
        finally:
            os.close(fd)
        if compact:
            self._compact(pending)
        self._unwritten.clear()

    @staticmethod
    def _ends_with_newline(fd: int, size: int) -> bool:
        return os.pread(fd, 1, size - 1) == b"\n" if hasattr(os, "pread") else True

    def _compact(self, pending: list[LedgerEntry]) -> None:
        """The newest `max_entries` entries (every one still in flight kept, but not a reservation whose run is
        gone: it never became a job), and the damaged lines as they were."""
        entries, _, damaged_lines = parse(read_regular_file(self.path, max_bytes=MAX_LEDGER_BYTES))
        for entry in pending:
            entries[entry.entry] = entry
        ordered = sorted(entries.values(), key=lambda e: (e.time, e.updated), reverse=True)
        now = time.time()
        ordered = [e for e in ordered if e.status not in ("dropped", "reserved") or e.in_flight(now)]  # never a job: gone
        kept = [e for i, e in enumerate(ordered) if i < self.max_entries or e.in_flight(now)]
        text = "".join(line + "\n" for line in damaged_lines) + "".join(e.to_json() + "\n" for e in reversed(kept))
        write_atomically(self.path, text.encode())


LAST_PRICE_NAME = "last_price.json"


def remember_price(folder: Path | None, service: str, usd_per_image: float) -> None:
    """Blocking, best effort: the catalog price last seen for `service`, for a limit to use when the catalog fails."""
    seen = MEMORY.last_prices.get(service)
    if seen is not None and seen[0] == usd_per_image and time.time() - seen[1] < 3600:
        return  # written within the hour
    MEMORY.last_prices[service] = (usd_per_image, time.time())
    if folder is None:
        return
    path = folder / LAST_PRICE_NAME
    try:
        known = json.loads(read_regular_file(path, max_bytes=65536))
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError, RecursionError):
        known = {}
    known[service] = {"usd_per_image": usd_per_image, "seen": time.time()}
    try:
        write_atomically(path, json.dumps(dict(list(known.items())[-20:])).encode())
    except OSError:
        pass  # the copy in memory still serves this process


def last_price(folder: Path | None, service: str, max_age_s: float) -> float | None:
    """The catalog price seen for `service` within `max_age_s`, from this process or the user folder."""
    now = time.time()
    seen: list[tuple[float, float]] = []
    if service in MEMORY.last_prices:
        seen.append(MEMORY.last_prices[service])
    if folder is not None:
        try:
            known = json.loads(read_regular_file(folder / LAST_PRICE_NAME, max_bytes=65536)).get(service)
            usd, when = _money(known["usd_per_image"]), float(known["seen"])
            if usd and math.isfinite(when):
                seen.append((usd, when))
        except (OSError, ValueError, RecursionError, AttributeError, KeyError, TypeError):
            pass
    fresh = [(when, usd) for usd, when in seen if usd and 0 <= now - when <= max_age_s]
    return max(fresh)[1] if fresh else None
