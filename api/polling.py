"""Adaptive status polling: quick at first, steady while the job changes, slower once it has been quiet a while.

A finished job is noticed about a quarter to half a second later on average, and
polling stays under two status requests per second. Intervals are jittered so that
many clients (or many runs against a job of fixed length) do not poll in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class PollSchedule:
    first_s: float = 0.5  # the second check comes quickly: short jobs finish in seconds
    steady_s: float = 0.65
    ceiling_s: float = 1.0  # reached only after `patience_s` without any change
    patience_s: float = 30.0
    growth: float = 1.1
    jitter: float = 0.2
    _current: float = field(init=False, default=0.0)
    _quiet_for: float = field(init=False, default=0.0)
    _first: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self._current = self.steady_s

    def next_delay(self, *, progressed: bool) -> float:
        """Delay before the next poll; `progressed` means the last answer differed from the one before."""
        if self._first:
            self._first = False
            return self.first_s
        if progressed:
            self._current, self._quiet_for = self.steady_s, 0.0
        elif self._quiet_for >= self.patience_s:
            self._current = min(self.ceiling_s, self._current * self.growth)
        delay = self._current * random.uniform(1 - self.jitter, 1 + self.jitter)
        self._quiet_for += delay
        return delay
