"""The resume journal: which request id was paid for which inputs, so a retry collects it instead of paying twice.

One small JSON file, rewritten atomically on every change, bounded in size and
age. It holds request ids, fingerprints and times: no token, no pixels.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .state_files import read_json, write_atomically

JOURNAL_NAME = "journal.json"
MAX_ENTRIES = 200
ENTRY_TTL_S = 48 * 3600  # result links expire after about a day; older ids are of no use
UNKNOWN_OUTCOME_HOLD_S = 3600

_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


@dataclass(frozen=True)
class JournalEntry:
    fingerprint: str
    state: str  # "submitted" (request_id known) or "unknown_outcome" (the submit got no answer)
    request_id: str | None
    at: float  # seconds since the epoch


class Journal:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / JOURNAL_NAME
        self._lock = _lock_for(self.path)

    def _load(self) -> dict[str, dict]:
        data = read_json(self.path)
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def _save(self, entries: dict[str, dict]) -> None:
        now = time.time()
        live = {fp: e for fp, e in entries.items() if isinstance(e, dict) and now - e.get("at", 0) < ENTRY_TTL_S}
        newest = dict(sorted(live.items(), key=lambda item: item[1].get("at", 0))[-MAX_ENTRIES:])
        write_atomically(self.path, json.dumps({"version": 1, "entries": newest}, indent=1).encode())

    def get(self, fingerprint: str) -> JournalEntry | None:
        with self._lock:
            raw = self._load().get(fingerprint)
        if not isinstance(raw, dict):
            return None
        age = time.time() - raw.get("at", 0)
        hold = UNKNOWN_OUTCOME_HOLD_S if raw.get("state") == "unknown_outcome" else ENTRY_TTL_S
        if age >= hold:
            return None
        return JournalEntry(fingerprint, str(raw.get("state")), raw.get("request_id"), float(raw.get("at", 0)))

    def _put(self, fingerprint: str, state: str, request_id: str | None) -> None:
        with self._lock:
            entries = self._load()
            entries[fingerprint] = {"state": state, "request_id": request_id, "at": time.time()}
            self._save(entries)

    def record_submitted(self, fingerprint: str, request_id: str) -> None:
        self._put(fingerprint, "submitted", request_id)

    def record_unknown_outcome(self, fingerprint: str) -> None:
        self._put(fingerprint, "unknown_outcome", None)

    def forget(self, fingerprint: str) -> None:
        with self._lock:
            entries = self._load()
            if entries.pop(fingerprint, None) is not None:
                self._save(entries)
