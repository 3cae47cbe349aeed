"""Adaptive status polling: quick at first and after any sign of progress, slower while nothing changes.

Intervals stay between 0.5 s and 0.8 s: a finished job is noticed about 0.25-0.4 s
later on average, and polling never exceeds two status requests per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PollSchedule:
    first_s: float = 0.5
    growth: float = 1.2
    ceiling_s: float = 0.8
    _current: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._current = self.first_s

    def next_delay(self, *, progressed: bool) -> float:
        """Delay before the next poll; `progressed` means the last answer differed from the one before."""
        if progressed:
            self._current = self.first_s
        delay = self._current
        self._current = min(self.ceiling_s, self._current * self.growth)
        return delay
