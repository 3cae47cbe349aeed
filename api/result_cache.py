"""Downloaded results kept on disk, so re-running unchanged inputs after a restart costs nothing.

One folder per fingerprint holding the files exactly as downloaded plus a small
meta.json; folders are renamed into place whole, and the oldest are evicted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .state_files import read_json

RESULTS_DIR = "results"
MAX_CACHED_RESULTS = 64


@dataclass(frozen=True)
class CachedResult:
    request_id: str
    urls: tuple[str, ...]
    cost_usd: float | None
    files: list[bytes]


class ResultCache:
    def __init__(self, directory: Path, *, max_results: int = MAX_CACHED_RESULTS) -> None:
        self.root = Path(directory) / RESULTS_DIR
        self.max_results = max_results

    def load(self, fingerprint: str) -> CachedResult | None:
        folder = self.root / fingerprint
        meta = read_json(folder / "meta.json")
        if not isinstance(meta, dict):
            return None
        try:
            files = [(folder / name).read_bytes() for name in meta["files"]]
            return CachedResult(str(meta["request_id"]), tuple(meta["urls"]), meta.get("cost_usd"), files)
        except (OSError, KeyError, TypeError):
            return None

    def store(self, fingerprint: str, request_id: str, urls: Sequence[str], cost_usd: float | None, files: Sequence[bytes]) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        names = [f"{index:02d}.img" for index in range(len(files))]
        for name, data in zip(names, files, strict=True):
            (staging / name).write_bytes(data)
        meta = {"request_id": request_id, "urls": list(urls), "cost_usd": cost_usd, "files": names}
        (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        target = self.root / fingerprint
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        self._evict()

    def _evict(self) -> None:
        folders = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        folders.sort(key=lambda p: p.stat().st_mtime)
        for old in folders[: max(0, len(folders) - self.max_results)]:
            shutil.rmtree(old, ignore_errors=True)
