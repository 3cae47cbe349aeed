"""The records: one row per job in one SQLite database in the user folder, shared by every ComfyUI process using it.

A job's row follows it through its states, and every question about paid work is a query on it:

    reserved ──► unknown ──► queued ──► generating ──► done
        │  (the last piece may     │                  └─► failed / cancelled / gone (RunComfy no longer knows it)
        └─► dropped    have been sent: counts, and holds the inputs)

- Resume: a row that `holds` its inputs (`hold = 1`: a submit that may have reached RunComfy, or a request id)
  makes an identical run collect that job instead of paying again: a request for 48 hours, a submit that got no
  answer for one hour.
- Spending: today's and this month's totals are sums over the rows (what a finished job cost, the estimate of one
  that may still run or be charged, a reservation only while its run is alive). A check and its reservation are
  one `BEGIN IMMEDIATE` transaction, so two processes cannot both spend the same headroom.
- Runs: whether a run is alive is its lease (a row of `leases` it renews while it runs), never a process id.
  The run lock of one set of inputs is a row of `locks` whose owner's lease is alive: a process that dies
  leaves a lock that ends with its lease, on every OS alike.
- Saved results: their files stay files (`results/<folder>/NN.img`); their index is the `saved` table.

Local trouble never ends a paid run. A database that cannot be opened or written (a read-only or full folder, a
folder or a FIFO in its place) is copied into memory, as far as it can be read, and this process goes on there, with
one warning line. Another program holding it (another ComfyUI mid-write, a database tool left open) is waited for
up to `wait_s`; then reads and writes made before anything is paid raise `Busy` (the run refuses: going on alone
could pay for what another process pays for), and records of a paid job move to memory (it goes on). A damaged
database is set aside under a new name, which the warning names, and what can still be read of it is copied into
a fresh one. Records written by a newer version make this one send nothing. The records of earlier versions
(`journal.json`, `ledger.jsonl`, `results/*/meta.json`, `last_price.json`) are imported whenever they are found,
and the old files renamed `*.imported`.

Only fingerprints, request ids, result URLs, counts, costs, the prompt's first words and result files are kept:
never the token, never the references' pixels. Every call here is blocking: callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import re
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .files import MAX_RESULT_FILE_BYTES, MAX_STATE_FILE_BYTES, read_regular_file

DB_NAME = "records.db"
RESULTS_DIR = "results"
REQUEST_HOLD_S = 48 * 3600  # RunComfy documents no lifetime for requests; two days is plenty for a resume
UNKNOWN_OUTCOME_HOLD_S = 3600
LEASE_S = 60.0  # a run renews its lease every third of this; a run that died frees its locks and reservations after it
MAX_LEASE_S = 3600.0  # a lease further ahead than any run takes was written before the clock was set back: expired
BUSY_S = 0.2  # one wait for another process's transaction; callers retry (`LOCK_WAIT_S`) and watch Stop meanwhile
LOCK_WAIT_S = 10.0
MAX_ROWS = 5000  # newest rows kept; a row that holds its inputs or may still run is never deleted
MAX_USD = 1_000_000.0
MAX_USD_PER_IMAGE = 1.0
PROMPT_WORDS_CHARS = 60
DETAIL_CHARS = 300
_DATA_URI = re.compile(r"data:[^\s\"'<>]*")  # an image sent inline: never kept
_FILE_NAME = re.compile(r"^\d{2,3}\.img$")
_FOLDER_NAME = re.compile(r"^[0-9a-zA-Z_-]{1,100}$")

STATES = ("reserved", "unknown", "queued", "generating", "done", "failed", "cancelled", "dropped", "gone")
NOT_CHARGED = ("failed", "cancelled", "dropped", "gone")
FINAL = frozenset({"done", "failed", "cancelled", "dropped", "gone"})
RANK = {"reserved": 0, "unknown": 1, "queued": 2, "generating": 3, **dict.fromkeys(FINAL, 4)}

_AMOUNT = "IS NULL OR (typeof({0}) IN ('real', 'integer') AND {0} BETWEEN 0 AND 1000000)"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in STATES)})),
    hold INTEGER NOT NULL DEFAULT 0 CHECK (hold IN (0, 1)),
    request_id TEXT,
    created REAL NOT NULL CHECK (typeof(created) IN ('real', 'integer') AND created BETWEEN 0 AND 253402300799),
    updated REAL NOT NULL CHECK (typeof(updated) IN ('real', 'integer')),
    owner TEXT,
    max_images INTEGER NOT NULL DEFAULT 0 CHECK (typeof(max_images) = 'integer' AND max_images BETWEEN 0 AND 10000),
    estimate_usd REAL CHECK (estimate_usd {_AMOUNT.format("estimate_usd")}),
    cost_usd REAL CHECK (cost_usd {_AMOUNT.format("cost_usd")}),
    images INTEGER CHECK (images IS NULL OR (typeof(images) = 'integer' AND images BETWEEN 0 AND 10000)),
    prompt TEXT NOT NULL DEFAULT '',
    node_id TEXT,
    prompt_id TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_fingerprint ON jobs (fingerprint);
CREATE INDEX IF NOT EXISTS jobs_by_request ON jobs (request_id);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created, state, cost_usd, estimate_usd);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
CREATE TABLE IF NOT EXISTS leases (owner TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS locks (fingerprint TEXT PRIMARY KEY, owner TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS saved (
    fingerprint TEXT PRIMARY KEY,
    folder TEXT NOT NULL,
    request_id TEXT NOT NULL,
    urls TEXT NOT NULL,
    cost_usd REAL CHECK (cost_usd {_AMOUNT.format("cost_usd")}),
    files TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prices (service TEXT PRIMARY KEY, usd_per_image REAL NOT NULL, seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS set_aside (at REAL NOT NULL, name TEXT NOT NULL);
"""
RESERVATION = ("id", "fingerprint", "state", "created", "updated", "owner", "max_images", "estimate_usd", "prompt", "node_id", "prompt_id")
VERSION = 1
_ALIVE = f"(leases.until > :now AND leases.until <= :now + {MAX_LEASE_S})"
_NOT_CHARGED = ", ".join(f"'{s}'" for s in (*NOT_CHARGED, "reserved"))
_TOTALS = f"""SELECT
    COALESCE(SUM(CASE WHEN state IN ({_NOT_CHARGED}) THEN 0 WHEN state = 'done' AND cost_usd IS NOT NULL THEN cost_usd
                 ELSE COALESCE(estimate_usd, 0) END), 0),
    COALESCE(SUM(state NOT IN ({_NOT_CHARGED})), 0),
    COALESCE(SUM(CASE WHEN state IN ('unknown', 'queued', 'generating') THEN COALESCE(estimate_usd, 0) ELSE 0 END), 0)
    FROM jobs WHERE created >= :since"""  # what finished jobs cost, and the estimates of those that may still be charged
_RESERVED = f"""SELECT COALESCE(SUM(COALESCE(jobs.estimate_usd, 0)), 0) FROM jobs JOIN leases ON leases.owner = jobs.owner
    WHERE jobs.state = 'reserved' AND jobs.created >= :since AND {_ALIVE}"""


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


def prompt_words(prompt: str) -> str:
    """The prompt's first words, at most `PROMPT_WORDS_CHARS` characters, on one line."""
    words = " ".join(prompt.split())
    if len(words) <= PROMPT_WORDS_CHARS:
        return words
    cut = words[:PROMPT_WORDS_CHARS].rsplit(" ", 1)[0] or words[:PROMPT_WORDS_CHARS]
    return cut + "…"


def clean_detail(detail: Any) -> str | None:
    """RunComfy's reason for a failure, as kept: it may quote the request, so inline images are cut out."""
    return None if detail is None else _DATA_URI.sub("data:…", str(detail))[:DETAIL_CHARS]


def amount(value: Any) -> float | None:
    """An amount in USD from 0 to `MAX_USD`, or None for anything else (a bool, text, NaN, a negative number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) and 0 <= value <= MAX_USD else None


def plausible_cost(cost_usd: float | None, max_images: int) -> bool:
    """Whether a job of up to `max_images` images can have cost `cost_usd` (None: nothing to doubt). The model's
    catalog price is a few cents an image; more than `MAX_USD_PER_IMAGE` an image is a fault, never a charge to
    count or show."""
    return cost_usd is None or cost_usd <= max(1, max_images) * MAX_USD_PER_IMAGE


def local_day_start(epoch: float, *, month: bool = False) -> float:
    """Epoch seconds of the start of the local calendar day (or month) of `epoch`."""
    day = datetime.datetime.fromtimestamp(epoch).date()
    day = day.replace(day=1) if month else day
    return datetime.datetime.combine(day, datetime.time.min).timestamp()


@dataclass(frozen=True)
class Job:
    """One row of `jobs`, as read."""

    id: str
    fingerprint: str
    state: str
    hold: bool
    request_id: str | None
    created: float
    updated: float
    owner: str | None
    max_images: int
    estimate_usd: float | None
    cost_usd: float | None
    images: int | None
    prompt: str
    node_id: str | None
    prompt_id: str | None
    detail: str | None
    alive: bool = False  # its run's lease lives (what a reservation counts by)

    @property
    def shown_state(self) -> str:
        """A reservation whose run is gone was never sent: it reads as dropped, as the totals count it."""
        return "dropped" if self.state == "reserved" and not self.alive else self.state


_JOB_COLUMNS = ", ".join(f"jobs.{name}" for name in Job.__dataclass_fields__ if name != "alive")
_SELECT_JOBS = f"SELECT {_JOB_COLUMNS}, COALESCE({_ALIVE}, 0) FROM jobs LEFT JOIN leases ON leases.owner = jobs.owner"


_HELD = (
    "jobs.fingerprint = :fp AND jobs.hold = 1 AND ((jobs.state = 'unknown' AND jobs.updated > :now - :unknown) OR "
    "(jobs.request_id IS NOT NULL AND jobs.created > :now - :request))"
)


def _lock_holder(conn: sqlite3.Connection, fingerprint: str) -> str | None:
    """The run that holds the lock of these inputs, if its lease lives."""
    query = f"SELECT locks.owner FROM locks JOIN leases ON leases.owner = locks.owner WHERE locks.fingerprint = :fp AND {_ALIVE}"
    row = conn.execute(query, {"fp": fingerprint, "now": time.time()}).fetchone()
    return row[0] if row is not None else None


def _job(row: Sequence[Any]) -> Job:
    values = list(row)
    values[3], values[-1] = bool(values[3]), bool(values[-1])
    return Job(*values)


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


@dataclass(frozen=True)
class CachedResult:
    request_id: str
    urls: tuple[str, ...]
    cost_usd: float | None
    files: list[bytes]  # empty when the saved files were unusable: only the request id is left to collect again


class Busy(Exception):
    """Another process holds the database for a moment: try again."""


class NewerVersion(Exception):
    """The records were written by a newer version of the pack: this one does not change them."""


class Records:
    """The records of one user folder (None: this process's memory only). One per folder per process: `at()`."""

    _open: dict[str, Records] = {}
    _open_guard = threading.Lock()

    def __init__(self, folder: Path | None, *, wait_s: float = LOCK_WAIT_S) -> None:
        self.folder = folder
        self.wait_s = wait_s  # how long another process may hold the database before this one waits no more
        self.path = folder / DB_NAME if folder is not None else None
        self.trouble: str | None = None  # the warning line, once the records live in memory (or were set aside)
        self.memory_reason: str | None = None  # why they live in memory: a daily limit cannot be checked there
        self.refusal: str | None = None  # why nothing may be sent at all (records of a newer version)
        self._guard = threading.RLock()
        self._conn = self._connect()
        with contextlib.suppress(Exception):  # bounded once per process; another process tidying meanwhile is fine
            self.tidy()

    @classmethod
    def at(cls, folder: Path | None, *, wait_s: float | None = None) -> Records:
        """The records of `folder` this process opened (opened now, the first time); `wait_s`: how long another
        process may hold them from now on (the run's `Timing.records_wait_s`)."""
        key = str(Path(folder).resolve()) if folder is not None else ""
        with cls._open_guard:
            found = cls._open.get(key)
            if found is None:
                found = cls._open[key] = cls(Path(folder) if folder is not None else None, wait_s=LOCK_WAIT_S if wait_s is None else wait_s)
            elif wait_s is not None:
                found.wait_s = wait_s
            return found

    @classmethod
    def reset(cls) -> None:
        """Close every database this process opened (tests: a new user folder each time)."""
        with cls._open_guard:
            for records in cls._open.values():
                with contextlib.suppress(Exception):
                    records._conn.close()
            cls._open.clear()

    # --- opening, and local trouble ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path is None:
            return self._in_memory(None)
        give_up = time.monotonic() + self.wait_s
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not _regular_or_absent(self.path):  # a FIFO or device is never opened, so never waited on
                    return self._in_memory("a folder is in its place" if self.path.is_dir() else "it is not a regular file")
                conn = sqlite3.connect(self.path, timeout=BUSY_S, isolation_level=None, check_same_thread=False)
                try:
                    self._prepare(conn)
                except BaseException:
                    conn.close()
                    raise
                return conn
            except NewerVersion as newer:
                self.refusal = (
                    f"The job records in {self.path} were written by a newer version of this pack ({newer}), so this one "
                    "cannot tell which inputs were already paid for; to never pay twice, it sends nothing. Update the pack."
                )
                return self._in_memory(str(newer))
            except sqlite3.DatabaseError as error:
                if _is_busy(error) and time.monotonic() < give_up:  # another process is setting it up: wait for it
                    time.sleep(0.02)
                    continue
                if _is_busy(error):  # not kept: the next run tries to open them again
                    raise Busy(f"another program keeps {self.path} locked") from None
                if _is_damage(error):
                    return self._set_aside(error)
                return self._in_memory(_why(error, self.path))
            except OSError as error:
                return self._in_memory(_why(error, self.path))

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """The schema, and on first use the records of earlier versions, in one transaction."""
        conn.execute("PRAGMA foreign_keys = OFF")
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # reading also proves it is a database
        if version > VERSION:
            raise NewerVersion(f"records version {version}")
        if version == VERSION and not any((self.folder / name).exists() for name in EARLIER_FILES):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            _create(conn)  # IF NOT EXISTS: a no-op on records of this version
            imported = _import_earlier(conn, self.folder)  # also files an older version
            conn.execute(f"PRAGMA user_version = {VERSION}")  # wrote after this one (a downgrade and back)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        for old in imported:  # not imported twice; a folder that refuses keeps them (the flag above already says so)
            with contextlib.suppress(OSError):
                old.replace(old.with_name(old.name + ".imported"))

    def _in_memory(self, why: str | None) -> sqlite3.Connection:
        """A database in this process's memory, holding what could still be read of the one on disk."""
        memory = sqlite3.connect(":memory:", timeout=BUSY_S, isolation_level=None, check_same_thread=False)
        _create(memory)
        memory.execute(f"PRAGMA user_version = {VERSION}")
        copied = why is not None and self.path is not None and _salvage(self.path, memory)
        if not copied and why is not None and self.folder is not None:
            _import_earlier(memory, self.folder)  # the files stay: the next process imports them into the disk's records
        if why is not None:
            self.memory_reason = f"the job records cannot be kept in {self.path} ({why})"
            self.trouble = (
                f"the job records cannot be kept in {self.path} ({why}), so they are kept in memory only: closing ComfyUI "
                "before this job is collected means the next run pays again, and other ComfyUI processes on this folder do "
                "not see this one's jobs"
            )
        return memory

    def _set_aside(self, error: BaseException) -> sqlite3.Connection:
        """A damaged database: renamed out of the way (the warning names it) and a fresh one started."""
        aside = self.path.with_name(f"{DB_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
        try:
            self.path.replace(aside)
        except OSError as refused:
            return self._in_memory(f"it is damaged ({error}) and cannot be moved aside: {_why(refused, self.path)}")
        conn = self._connect()
        with contextlib.suppress(sqlite3.Error):  # a daily limit cannot count what the damaged records held today
            self._conn = conn
            self.write(lambda c: c.execute("INSERT INTO set_aside VALUES (?, ?)", (time.time(), aside.name)))
            with self._guard:
                _salvage(aside, self._conn)  # what can still be read: jobs in flight stay collected, never paid again
        if self.trouble is None:
            self.trouble = f"the job records {self.path} were damaged ({error}); they were set aside as {aside.name} and new ones started"
        return self._conn

    def _fall_back(self, error: BaseException) -> None:
        """A write the disk refused: from now on this process keeps the records in memory, one warning line."""
        why = "another program keeps it locked (another ComfyUI, or a database tool)" if isinstance(error, Busy) else _why(error, self.path)
        if _is_damage(error):
            why = f"it is damaged: {error}"
        old = self._conn
        self._conn = self._in_memory(why)
        with contextlib.suppress(sqlite3.Error):
            old.close()

    @property
    def in_memory(self) -> bool:
        return self.path is None or self.memory_reason is not None

    # --- transactions ----------------------------------------------------------------------------------------

    def read(self, work: Callable[[sqlite3.Connection], Any], *, wait_s: float | None = None) -> Any:
        """`work(conn)` with the database as it is, waiting while another process commits (up to `wait_s`, then
        `Busy`: a caller about to pay must not take "cannot read" for "nothing there"); a database that cannot be
        read (damaged, a table gone) reads as the memory copy of what could be salvaged."""
        give_up = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        while True:
            with self._guard:
                try:
                    return work(self._conn)
                except sqlite3.DatabaseError as error:
                    if not _is_busy(error):
                        self._fall_back(error)
                        return work(self._conn)
                    if time.monotonic() > give_up:
                        raise Busy(str(error)) from None
            time.sleep(0.02)

    def write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """`work(conn)` in one `BEGIN IMMEDIATE` transaction. `Busy` when another process holds the database (the
        caller retries); when the disk refuses, the records move to memory and `work` runs there."""
        with self._guard:
            try:
                return self._transaction(work)
            except sqlite3.DatabaseError as error:
                if _is_busy(error):
                    raise Busy(str(error)) from None
                self._fall_back(error)
                return self._transaction(work)

    def write_even_if_busy(self, work: Callable[[sqlite3.Connection], Any], *, wait_s: float | None = None) -> Any:
        """A record that must be kept: retried while another process holds the database, then kept in memory."""
        give_up = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        while True:
            try:
                return self.write(work)
            except Busy as busy:
                if time.monotonic() > give_up:
                    with self._guard:
                        self._fall_back(busy)
                        return self._transaction(work)
                time.sleep(0.02)

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            answer = work(conn)
            conn.execute("COMMIT")
            return answer
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    # --- runs: leases and locks ----------------------------------------------------------------------------

    def renew(self, owner: str, lease_s: float) -> None:
        """Start or extend a run's lease: one try (`Busy` when another process holds the records: the lease outlasts
        the wait for the next renewal). A lease that ran out is not revived here: a run held up past it (a laptop
        asleep) counts as gone until its next transaction checks again what others did meanwhile."""
        self.write(lambda c: extend_lease(c, owner, lease_s))

    def try_lock(self, fingerprint: str, owner: str, conn: sqlite3.Connection) -> bool:
        """Within a transaction: take the run lock of `fingerprint` for `owner` unless a run whose lease lives holds it."""
        if _lock_holder(conn, fingerprint) not in (None, owner):
            return False
        conn.execute("INSERT OR REPLACE INTO locks VALUES (?, ?)", (fingerprint, owner))
        return True

    def unlock(self, fingerprint: str, owner: str) -> None:
        """Let go of a run lock; held by another program meanwhile, it ends with the run's lease instead."""
        with contextlib.suppress(Busy):
            self.write(lambda c: c.execute("DELETE FROM locks WHERE fingerprint = ? AND owner = ?", (fingerprint, owner)))

    def end_run(self, owner: str) -> None:
        """A run ended: its unused reservations are dropped, its locks and its lease go."""

        def end(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET state = 'dropped', detail = 'not submitted', updated = ? WHERE owner = ? AND state = 'reserved'",
                (time.time(), owner),
            )
            conn.execute("DELETE FROM locks WHERE owner = ?", (owner,))
            conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))

        with contextlib.suppress(Busy):  # held by another program: its reservations and locks end with its lease
            self.write(end)

    # --- jobs ----------------------------------------------------------------------------------------------

    def jobs(self, where: str = "1", params: Mapping[str, Any] | None = None, *, limit: int = -1, wait_s: float | None = None) -> list[Job]:
        query = f"{_SELECT_JOBS} WHERE {where} ORDER BY jobs.created DESC, jobs.updated DESC LIMIT {int(limit)}"
        return self.read(lambda c: [_job(row) for row in c.execute(query, {"now": time.time(), **(params or {})})], wait_s=wait_s)

    def by_request(self, request_id: str, *, wait_s: float | None = None) -> Job | None:
        found = self.jobs("jobs.request_id = :rid", {"rid": request_id}, limit=1, wait_s=wait_s)
        return found[0] if found else None

    def held(self, fingerprint: str, *, wait_s: float | None = None) -> Job | None:
        """The job these inputs are held by: a request to collect (48 hours), or a submit that got no answer (one
        hour). A row dated in the future (the clock was set back since) holds too."""
        params = {"fp": fingerprint, "now": time.time(), "unknown": UNKNOWN_OUTCOME_HOLD_S, "request": REQUEST_HOLD_S}
        found = self.jobs(_HELD, params, limit=1, wait_s=wait_s)
        return found[0] if found else None

    def claim_send(self, job_id: str, owner: str, lease_s: float, conn: sqlite3.Connection) -> Job | None:
        """Within a transaction, just before the last piece of a submit: the job now may exist (it holds its inputs,
        counts at its estimate). None when another run took its inputs over meanwhile (this run was paused past its
        lease: a saved result, another job holding them, or the run lock held by another live run): then it must not
        be sent. Returns the job as it was, with `alive` telling whether this run's lease had lapsed."""
        now = time.time()
        row = conn.execute(f"{_SELECT_JOBS} WHERE jobs.id = :id", {"id": job_id, "now": now}).fetchone()
        if row is None:
            return None
        job = _job(row)
        params = {"fp": job.fingerprint, "now": now, "unknown": UNKNOWN_OUTCOME_HOLD_S, "request": REQUEST_HOLD_S, "id": job_id}
        other_job = conn.execute(f"SELECT 1 FROM jobs WHERE {_HELD} AND jobs.id != :id", params).fetchone()
        saved = conn.execute("SELECT 1 FROM saved WHERE fingerprint = ?", (job.fingerprint,)).fetchone()
        holder = _lock_holder(conn, job.fingerprint)
        if other_job or saved or holder not in (None, owner):
            return None
        renew_in(conn, owner, lease_s)
        conn.execute("INSERT OR REPLACE INTO locks VALUES (?, ?)", (job.fingerprint, owner))
        conn.execute(
            "UPDATE jobs SET state = 'unknown', hold = 1, updated = ?, detail = ? WHERE id = ? AND state = 'reserved'",
            (now, "the submit got no answer: it may be running and charged", job_id),
        )
        return job

    def in_flight(self, fingerprints: Iterable[str], conn: sqlite3.Connection) -> set[str]:
        """Which of these inputs a run is paying for right now (a live reservation, or a job that may still run)."""
        marks = ",".join("?" * len(fingerprints := list(fingerprints)))
        rows = conn.execute(
            f"SELECT jobs.fingerprint FROM jobs LEFT JOIN leases ON leases.owner = jobs.owner WHERE jobs.fingerprint IN ({marks}) "
            f"AND (jobs.state IN ('unknown', 'queued', 'generating') OR (jobs.state = 'reserved' AND "
            f"{_ALIVE.replace(':now', '?')}))",
            [*fingerprints, *[time.time()] * 2],
        )
        return {fingerprint for (fingerprint,) in rows}

    def change(self, job_id: str, *, wait_s: float | None = None, **changes: Any) -> None:
        """A job's new state (never back from an ending or to an earlier live state: a late write loses)."""
        state = changes.get("state")
        if "detail" in changes:
            changes["detail"] = clean_detail(changes["detail"])
        changes["updated"] = time.time()
        assignments = ", ".join(f"{name} = :{name}" for name in changes)
        guard = ""
        if state is not None:  # RANK names every state the table allows: an ending follows any live state
            earlier = ", ".join(repr(s) for s, rank in RANK.items() if rank < RANK[state])
            guard = f" AND state IN ({earlier})"
        self.write_even_if_busy(
            lambda c: c.execute(f"UPDATE jobs SET {assignments} WHERE id = :id{guard}", {**changes, "id": job_id}), wait_s=wait_s
        )

    def release(self, fingerprint: str) -> None:
        """These inputs are held by no job any more (it ended without results, or its files cannot be used)."""
        self.write_even_if_busy(lambda c: c.execute("UPDATE jobs SET hold = 0 WHERE fingerprint = ? AND hold = 1", (fingerprint,)))

    def totals(self, since: float, conn: sqlite3.Connection | None = None, *, besides: Sequence[str] = ()) -> Totals:
        """What the jobs made on or after `since` add up to (a later date counts too: setting the clock back cannot
        hide spending). A reservation counts only while its run's lease lives, and not when it is for inputs in
        `besides`: of two runs of the same inputs only one pays (the run lock makes the other collect its job)."""

        def add(c: sqlite3.Connection) -> Totals:
            usd, jobs, in_flight = c.execute(_TOTALS, {"since": since}).fetchone()
            shared = {f"f{n}": fingerprint for n, fingerprint in enumerate(besides)}
            others = f" AND jobs.fingerprint NOT IN ({', '.join(f':{key}' for key in shared)})" if shared else ""
            reserved = c.execute(_RESERVED + others, {"since": since, "now": time.time(), **shared}).fetchone()[0]
            return Totals(round(usd + reserved, 6), jobs, round(in_flight + reserved, 6))

        return add(conn) if conn is not None else self.read(add)

    def today(self, conn: sqlite3.Connection | None = None, *, besides: Sequence[str] = ()) -> Totals:
        return self.totals(local_day_start(time.time()), conn, besides=besides)

    def month(self) -> Totals:
        return self.totals(local_day_start(time.time(), month=True))

    def lost_today(self, conn: sqlite3.Connection) -> str | None:
        """Why today's spending cannot be known: damaged records were set aside today."""
        row = conn.execute("SELECT name FROM set_aside WHERE at >= ? ORDER BY at DESC", (local_day_start(time.time()),)).fetchone()
        return f"the job records were damaged and set aside today as {row[0]} in {self.folder}" if row is not None else None

    def tidy(self) -> None:
        """Bound the table: the newest `MAX_ROWS` rows stay, and every row that holds its inputs or may still run.
        Result files a process died saving (an hour old) go too."""
        if self.folder is not None:
            with contextlib.suppress(OSError):
                for staging in (self.folder / RESULTS_DIR).glob(".incoming-*"):
                    if time.time() - staging.lstat().st_mtime > 3600:
                        shutil.rmtree(staging, ignore_errors=True)
        self.write(
            lambda c: c.execute(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE hold = 0 AND state IN "
                f"({', '.join(repr(s) for s in (*NOT_CHARGED, 'done', 'reserved'))}) "
                f"ORDER BY created DESC LIMIT -1 OFFSET {MAX_ROWS})"
            )
        )

    # --- saved results -------------------------------------------------------------------------------------

    def saved(self, fingerprint: str, *, wait_s: float | None = None) -> CachedResult | None:
        """The saved result of these inputs; ValueError when its index or files are damaged (the caller sets it
        aside and collects the request again). Reading needs no write: a read-only folder still reuses it."""
        row = self.read(lambda c: c.execute("SELECT * FROM saved WHERE fingerprint = ?", (fingerprint,)).fetchone(), wait_s=wait_s)
        if row is None or self.folder is None:
            return None
        _, folder, request_id, urls, cost, names, _, _ = row
        urls, names = json.loads(urls), json.loads(names)
        if not (
            isinstance(folder, str)
            and _FOLDER_NAME.match(folder)
            and isinstance(request_id, str)
            and request_id
            and isinstance(names, list)
            and names
            and all(isinstance(name, str) and _FILE_NAME.match(name) for name in names)
            and isinstance(urls, list)
            and all(isinstance(url, str) for url in urls)
            and plausible_cost(amount(cost), len(names))  # a cost no job of this size can have is damage, never shown
        ):
            raise ValueError(f"unexpected shape (request {request_id})")
        where = self.folder / RESULTS_DIR / folder
        if not where.is_dir() and not where.is_symlink():  # removed by hand: nothing saved (the job's record remains)
            with contextlib.suppress(Exception):
                self.write(lambda c: c.execute("DELETE FROM saved WHERE fingerprint = ?", (fingerprint,)))
            return None
        try:
            files = [read_regular_file(where / name, max_bytes=MAX_RESULT_FILE_BYTES) for name in names]  # never a link
        except OSError as unreadable:
            raise ValueError(f"its files cannot be read ({unreadable.strerror or unreadable})") from None
        with contextlib.suppress(Exception):  # least recently used goes first; a refusal only makes it look older
            self.write(lambda c: c.execute("UPDATE saved SET used = ? WHERE fingerprint = ?", (time.time(), fingerprint)))
        return CachedResult(request_id, tuple(urls), amount(cost), files)

    def saved_request(self, fingerprint: str) -> str | None:
        row = self.read(lambda c: c.execute("SELECT request_id FROM saved WHERE fingerprint = ?", (fingerprint,)).fetchone())
        return row[0] if row is not None and isinstance(row[0], str) else None

    def has_saved(self, fingerprints: Sequence[str]) -> set[str]:
        marks = ",".join("?" * len(fingerprints))
        return {
            fp for (fp,) in self.read(lambda c: c.execute(f"SELECT fingerprint FROM saved WHERE fingerprint IN ({marks})", fingerprints))
        }

    def store(self, fingerprint: str, result: CachedResult, *, max_entries: int, max_bytes: int) -> None:
        """Save the files in a folder of their own (never replacing one another process may be reading), index them,
        then evict the least recently used beyond the bounds. OSError when the folder refuses the files."""
        if self.folder is None:
            raise OSError("no folder for saved results")
        root = self.folder / RESULTS_DIR
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
        names = [f"{index:02d}.img" for index in range(len(result.files))]
        try:
            for name, data in zip(names, result.files, strict=True):
                (staging / name).write_bytes(data)
            folder = f"{fingerprint[:16]}-{uuid.uuid4().hex[:12]}"
            staging.replace(root / folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        row = (fingerprint, folder, result.request_id, json.dumps(list(result.urls)), amount(result.cost_usd), json.dumps(names))
        size = sum(len(data) for data in result.files)

        def index(conn: sqlite3.Connection) -> list[str]:
            old = [f for (f,) in conn.execute("SELECT folder FROM saved WHERE fingerprint = ?", (fingerprint,))]
            conn.execute("INSERT OR REPLACE INTO saved VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*row, size, time.time()))
            kept, total = 0, 0
            for fp, f, used_bytes in conn.execute("SELECT fingerprint, folder, bytes FROM saved ORDER BY used DESC").fetchall():
                kept, total = kept + 1, total + used_bytes
                if fp != fingerprint and (kept > max_entries or total > max_bytes):
                    conn.execute("DELETE FROM saved WHERE fingerprint = ?", (fp,))
                    old.append(f)
                    kept, total = kept - 1, total - used_bytes
            return old

        try:
            unused = self.write_even_if_busy(index)
        except BaseException:
            shutil.rmtree(root / folder, ignore_errors=True)
            raise
        for name in unused:  # best effort: a file another process holds open (Windows) is left for a later tidy
            if _FOLDER_NAME.match(name):
                shutil.rmtree(root / name, ignore_errors=True)

    def drop_saved(self, fingerprint: str) -> None:
        row = self.read(lambda c: c.execute("SELECT folder FROM saved WHERE fingerprint = ?", (fingerprint,)).fetchone())
        self.write_even_if_busy(lambda c: c.execute("DELETE FROM saved WHERE fingerprint = ?", (fingerprint,)))
        if row is not None and isinstance(row[0], str) and _FOLDER_NAME.match(row[0]) and self.folder is not None:
            shutil.rmtree(self.folder / RESULTS_DIR / row[0], ignore_errors=True)

    # --- prices --------------------------------------------------------------------------------------------

    def remember_price(self, service: str, usd_per_image: float) -> None:
        with contextlib.suppress(Busy):
            self.write(lambda c: c.execute("INSERT OR REPLACE INTO prices VALUES (?, ?, ?)", (service, usd_per_image, time.time())))

    def last_price(self, service: str, max_age_s: float) -> float | None:
        row = self.read(lambda c: c.execute("SELECT usd_per_image, seen FROM prices WHERE service = ?", (service,)).fetchone())
        if row is None or not amount(row[0]) or not isinstance(row[1], (int, float)) or not 0 <= time.time() - row[1] <= max_age_s:
            return None
        return float(row[0])


def _regular_or_absent(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def renew_in(conn: sqlite3.Connection, owner: str, lease_s: float) -> None:
    """Within a transaction that checked what other runs hold: this run is alive for `lease_s` more."""
    conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?)", (owner, time.time() + lease_s))


def extend_lease(conn: sqlite3.Connection, owner: str, lease_s: float) -> None:
    """A new lease, or a live one extended; never one that ran out."""
    now = time.time()
    conn.execute(
        "INSERT INTO leases VALUES (:owner, :until) ON CONFLICT (owner) DO UPDATE SET until = excluded.until "
        f"WHERE leases.until > :now AND leases.until <= :now + {MAX_LEASE_S}",
        {"owner": owner, "until": now + lease_s, "now": now},
    )


def _salvage(path: Path, memory: sqlite3.Connection) -> bool:
    """Copy what can still be read of the records at `path` into `memory`, row by row (a damaged page ends one
    table's copy, not the others'): read-only first, then the bytes as they lie. Never waits on another process for
    longer than `BUSY_S`; never opens what is not a regular file. Whether anything was copied."""
    if not path.exists() or not _regular_or_absent(path):
        return False
    uri = path.resolve().as_uri()
    for mode in ("mode=ro", "immutable=1"):
        copied = False
        with contextlib.suppress(sqlite3.Error):
            memory.execute("ATTACH DATABASE ? AS disk", (f"{uri}?{mode}",))
            try:
                for table in ("jobs", "leases", "locks", "saved", "prices", "set_aside"):
                    columns = [row[1] for row in memory.execute(f"PRAGMA main.table_info({table})")]
                    with contextlib.suppress(sqlite3.Error):
                        rows = memory.execute(f"SELECT {', '.join(columns)} FROM disk.{table}")
                        insert = f"INSERT OR IGNORE INTO main.{table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                        while True:
                            with contextlib.suppress(sqlite3.IntegrityError):  # a row the records cannot hold is left out
                                row = rows.fetchone()
                                if row is None:
                                    break
                                memory.execute(insert, row)
                                copied = True
            finally:
                with contextlib.suppress(sqlite3.Error):
                    memory.execute("DETACH DATABASE disk")
        if copied:
            return True
    return False


def _create(conn: sqlite3.Connection) -> None:
    """The tables, within the caller's transaction (`executescript` would commit it)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _is_busy(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


def _is_damage(error: BaseException) -> bool:
    return isinstance(error, sqlite3.DatabaseError) and any(
        words in str(error) for words in ("not a database", "malformed", "file is encrypted", "no such table", "no such column")
    )


def _why(error: BaseException, path: Path | None) -> str:
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return "a file is where its folder should be"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    text = str(error)
    if "readonly" in text or "read-only" in text:
        return "the folder is read-only"
    if "full" in text:
        return "the disk is full"
    if "unable to open" in text and path is not None and path.is_dir():
        return "a folder is in its place"
    return text or type(error).__name__


# --- the records of earlier versions ------------------------------------------------------------------------


def _read_old(path: Path) -> bytes | None:
    try:
        return read_regular_file(path, max_bytes=MAX_STATE_FILE_BYTES)
    except OSError:
        return None


def _old_json(path: Path) -> Any:
    data = _read_old(path)
    try:
        return json.loads(data.decode("utf-8-sig")) if data is not None else None
    except (ValueError, RecursionError):
        return None


EARLIER_FILES = ("ledger.jsonl", "journal.json", "last_price.json")


def _import_earlier(conn: sqlite3.Connection, folder: Path) -> list[Path]:
    """Import `ledger.jsonl`, `journal.json`, saved results' `meta.json` and `last_price.json`; the files imported."""
    imported: list[Path] = []
    ledger = folder / "ledger.jsonl"
    if (data := _read_old(ledger)) is not None:
        for line in data.decode("utf-8-sig", "replace").splitlines():
            with contextlib.suppress(Exception):  # a line that is no entry (damage, a hand edit) is left out
                _import_ledger_line(conn, json.loads(line))
        imported.append(ledger)
    journal = folder / "journal.json"
    entries = _old_json(journal)
    if isinstance(entries, dict) and isinstance(entries.get("entries"), dict):
        for fingerprint, entry in entries["entries"].items():
            with contextlib.suppress(Exception):  # an entry that is no entry is left out
                _import_journal_entry(conn, fingerprint, entry)
        imported.append(journal)
    results = folder / RESULTS_DIR
    with contextlib.suppress(OSError):
        for old in results.iterdir():
            meta = _old_json(old / "meta.json") if old.is_dir() and not old.is_symlink() and _FOLDER_NAME.match(old.name) else None
            if isinstance(meta, dict) and isinstance(meta.get("request_id"), str) and isinstance(meta.get("files"), list):
                with contextlib.suppress(ValueError, TypeError, sqlite3.Error, OSError):
                    size = sum((old / name).stat().st_size for name in meta["files"] if isinstance(name, str) and _FILE_NAME.match(name))
                    conn.execute(
                        "INSERT OR IGNORE INTO saved VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (old.name, old.name, meta["request_id"], json.dumps(meta.get("urls") or []), amount(meta.get("cost_usd")),
                         json.dumps(meta["files"]), size, (old / "meta.json").stat().st_mtime),
                    )  # fmt: skip
    prices = folder / "last_price.json"
    known = _old_json(prices)
    if isinstance(known, dict):
        for service, seen in known.items():
            with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError, sqlite3.Error):
                if amount(seen["usd_per_image"]) and math.isfinite(float(seen["seen"])):
                    conn.execute(
                        "INSERT OR REPLACE INTO prices VALUES (?, ?, ?)", (service, float(seen["usd_per_image"]), float(seen["seen"]))
                    )
        imported.append(prices)
    return imported


_OLD_STATES = {
    "reserved": "dropped",
    "unknown": "unknown",
    **{s: s for s in ("queued", "generating", "done", "failed", "cancelled", "dropped")},
}


def _import_ledger_line(conn: sqlite3.Connection, raw: Any) -> None:
    if not isinstance(raw, dict) or raw.get("v") != 1 or raw.get("status") not in _OLD_STATES or not isinstance(raw.get("entry"), str):
        raise ValueError("not a ledger entry")
    when = float(raw["time"])
    text = {key: raw[key][:200] if isinstance(raw.get(key), str) else None for key in ("request_id", "node_id", "prompt_id", "detail")}
    conn.execute(  # the newest snapshot of an entry wins, wherever a late write put its line
        "INSERT INTO jobs (id, fingerprint, state, hold, request_id, created, updated, max_images, estimate_usd, "
        "cost_usd, images, prompt, node_id, prompt_id, detail) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET state = excluded.state, request_id = excluded.request_id, updated = excluded.updated, "
        "estimate_usd = excluded.estimate_usd, cost_usd = excluded.cost_usd, images = excluded.images, detail = excluded.detail "
        "WHERE excluded.updated >= jobs.updated",
        (raw["entry"][:64], str(raw.get("fingerprint") or "")[:128], _OLD_STATES[raw["status"]], text["request_id"], when,
         float(raw.get("updated") or when), raw.get("max_images") if type(raw.get("max_images")) is int else 0,
         amount(raw.get("estimate_usd")), amount(raw.get("cost_usd")), raw.get("images") if type(raw.get("images")) is int else None,
         str(raw.get("prompt") or "")[: PROMPT_WORDS_CHARS + 1], text["node_id"], text["prompt_id"], text["detail"]),
    )  # fmt: skip


def _import_journal_entry(conn: sqlite3.Connection, fingerprint: str, raw: Any) -> None:
    """A journal entry holds its inputs: the ledger's row of the same job does, or a row of its own."""
    state, request_id, at = raw.get("state"), raw.get("request_id"), float(raw.get("at"))
    if not math.isfinite(at):
        raise ValueError("no time")
    if state == "submitted" and isinstance(request_id, str) and request_id:
        found = conn.execute("UPDATE jobs SET hold = 1, fingerprint = ? WHERE request_id = ?", (fingerprint, request_id)).rowcount
        if not found:
            conn.execute(
                "INSERT INTO jobs (id, fingerprint, state, hold, request_id, created, updated) VALUES (?, ?, 'queued', 1, ?, ?, ?)",
                (uuid.uuid4().hex, fingerprint, request_id, at, at),
            )
    elif state == "unknown_outcome":
        found = conn.execute(
            "UPDATE jobs SET hold = 1, updated = max(updated, ?) WHERE fingerprint = ? AND state = 'unknown'", (at, fingerprint)
        ).rowcount
        if not found:
            conn.execute(
                "INSERT INTO jobs (id, fingerprint, state, hold, created, updated) VALUES (?, ?, 'unknown', 1, ?, ?)",
                (uuid.uuid4().hex, fingerprint, at, at),
            )
