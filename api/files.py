"""Files the pack keeps in the user folder: written atomically and owner-only, read only when they are regular
files of a bounded size (a FIFO, device, folder or, unless asked, symlink is refused, never waited on)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


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
MAX_STATE_FILE_BYTES = 16 * 1024**2  # a settings file or an earlier version's record; anything far larger is damage


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
