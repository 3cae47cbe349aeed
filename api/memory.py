"""Giving freed memory back to the operating system between the phases of a run.

Large buffers (encoded references, decoded results) are freed as soon as they are
no longer needed, but glibc keeps freed heap pages mapped; without a trim the
process would look as big as its largest past phase, for as long as ComfyUI runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None


def release_free_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
