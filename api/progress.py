"""What the user sees while a run goes on: a line of text and a fraction of the whole run."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .job import JobEvent


@dataclass(frozen=True)
class Progress:
    text: str
    fraction: float  # 0..1 of the whole run


ProgressSink = Callable[[Progress], None]


def _running_fraction(elapsed_s: float) -> float:
    """Generation time is unknown; approach 0.8 smoothly so the bar keeps moving."""
    return 0.2 + 0.6 * (1.0 - math.exp(-elapsed_s / 90.0))


class ProgressReporter:
    """Turns pipeline steps and job events into `Progress`, never letting the fraction go backwards."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self.sink = sink
        self.fraction = 0.0
        self.pinned: str | None = None
        self._warning_parts: dict[str, str] = {}

    @property
    def warnings(self) -> list[str]:
        """The run's one warning line, if anything went wrong locally."""
        return ["Warning: " + "; ".join(self._warning_parts.values())] if self._warning_parts else []

    def pin(self, line: str) -> None:
        """Keep `line` (e.g. the cost estimate) under every later message, so it stays readable."""
        self.pinned = line
        self(line)

    def warn(self, part: str, *, key: str) -> None:
        """Something the run goes on despite. All of a run's warnings share one line ("Warning: …"), kept under
        every later message and in the result's notes; a part with the same `key` replaces the earlier one."""
        self._warning_parts[key] = part
        self(self.warnings[0])

    def __call__(self, text: str, fraction: float | None = None) -> None:
        if fraction is not None:
            self.fraction = max(self.fraction, min(1.0, fraction))
        under = [line for line in (*self.warnings, self.pinned) if line and line != text]
        if under:
            text = "\n".join((text, *under))
        if self.sink is not None:
            self.sink(Progress(text, self.fraction))

    def job_event(self, event: JobEvent) -> None:
        fractions = {"submitting": 0.1, "submitted": 0.15, "queued": 0.17, "finishing": 0.8}
        if event.phase == "running":
            self(event.message, _running_fraction(event.elapsed_s or 0.0))
        else:
            self(event.message, fractions.get(event.phase))
