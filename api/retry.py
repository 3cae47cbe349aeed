"""How long to wait before trying a call again, and for how long to keep trying."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

MAX_RETRY_AFTER_S = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and by total time spent waiting."""

    max_attempts: int = 8
    budget_s: float = 180.0
    base_delay_s: float = 0.5
    max_delay_s: float = 15.0

    def backoff(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based), with +-25% jitter."""
        delay = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return delay * random.uniform(0.75, 1.25)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), capped; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER_S))
