"""How long to wait before trying a call again, and for how long to keep trying.

`Retry-After` is honoured as a lower bound on the next wait, never as permission to
hammer: `Retry-After: 0` still backs off exponentially, and no wait exceeds
`max_delay_s` (about 30 s by default), so a service that comes back is noticed soon.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and by total time spent waiting.

    `max_attempts=None` and `budget_s=None` retry without limit: for reads of a paid job,
    whose own deadline is what ends the wait.
    """

    max_attempts: int | None = 8
    budget_s: float | None = 180.0
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Wait before retry number `attempt` (1-based): backoff with +-25% jitter, at least `retry_after`, at most `max_delay_s`."""
        backoff = min(self.max_delay_s, self.base_delay_s * (2 ** min(attempt - 1, 30))) * random.uniform(0.75, 1.25)
        if retry_after is not None:
            backoff = max(backoff, retry_after)
        return min(backoff, self.max_delay_s)

    def gives_up(self, attempt: int, waited_s: float, next_delay_s: float) -> bool:
        """True when `attempt` tries were the last, or the next wait would pass the time budget."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return True
        return self.budget_s is not None and waited_s + next_delay_s > self.budget_s

    @classmethod
    def until_deadline(cls, *, base_delay_s: float = 0.5, max_delay_s: float = 30.0) -> RetryPolicy:
        """Never give up by itself: the caller's deadline (a paid job's) ends the retries."""
        return cls(max_attempts=None, budget_s=None, base_delay_s=base_delay_s, max_delay_s=max_delay_s)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), >= 0; None if absent or unreadable."""
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
    if seconds != seconds or seconds == float("inf"):  # NaN, inf
        return None
    return max(0.0, seconds)
