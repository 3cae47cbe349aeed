"""Keeping ComfyUI's console readable: httpx logs every request at INFO, and a long job is polled
hundreds of times. Successful status polls of our own API base are dropped from that log; every
other request (ours and other packs') is logged as before."""

from __future__ import annotations

import logging

_prefixes: set[str] = set()


class _DropSuccessfulStatusPolls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) >= 4 and args[0] == "GET" and args[3] == 200:
            url = str(args[1])
            if url.endswith("/status") and any(url.startswith(prefix) for prefix in _prefixes):
                return False
        return True


_filter = _DropSuccessfulStatusPolls()


def quiet_status_polls(base_url: str) -> None:
    """Drop httpx's INFO line for each successful status poll under `base_url`."""
    _prefixes.add(base_url.rstrip("/") + "/requests/")
    logger = logging.getLogger("httpx")
    if _filter not in logger.filters:
        logger.addFilter(_filter)
