"""Files the pack keeps in the user folder: written atomically and owner-only, read only when they are regular
files of a bounded size (a FIFO, device, folder or, unless asked, symlink is refused, never waited on)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; locking is then per process only
    fcntl = None  # type: ignore[assignment]


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename over it: readers see old or new, never half.
    The file is readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


MAX_RESULT_FILE_BYTES = 64 * 1024**2  # as for a download
MAX_STATE_FILE_BYTES = 16 * 1024**2  # a journal or meta.json is a few kB; anything far larger is damage


def read_regular_file(path: Path, *, max_bytes: int, follow_symlinks: bool = False) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. A FIFO, device or folder (and, unless
    `follow_symlinks`, a symlink) is refused with an OSError, never waited on or read without end."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """The decoded file, or None when it is missing, not a regular file, unreadable or damaged."""
    try:
        return json.loads(read_regular_file(path, max_bytes=MAX_STATE_FILE_BYTES))
    except (OSError, ValueError, RecursionError):
        return None


class FileLock:
    """An exclusive `flock` on a lock file that is removed on release.

    After locking, the path must still name the locked file: otherwise a releasing holder
    removed it in between, and the lock is taken again on the new file.
    """

    def __init__(self, path: Path | None, fd: int | None) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def try_acquire(cls, path: Path) -> FileLock | None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, fd)
            os.close(fd)

    @classmethod
    @contextlib.contextmanager
    def hold(cls, path: Path, *, timeout_s: float):
        """Wait (in a worker thread) up to `timeout_s` for the lock, else TimeoutError; a no-op where file
        locks do not exist. Bounded, so a suspended process holding it cannot hang a run."""
        lock = cls(None, None)
        if fcntl is not None:
            give_up = time.monotonic() + timeout_s
            while (found := cls.try_acquire(path)) is None:
                if time.monotonic() > give_up:
                    raise TimeoutError(errno.ETIMEDOUT, "another process keeps the journal locked")
                time.sleep(0.02)
            lock = found
        try:
            yield lock
        finally:
            lock.release()

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # still ours: nobody can hold it, and later lockers re-check the path
        os.close(self.fd)  # closing releases the flock
        self.fd = None
