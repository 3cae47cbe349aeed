"""What the user sees while a run goes on: one vocabulary of phases, and the reporter that turns steps into text
and a fraction of the progress bar.

Every phase carries how the batch line names it and its share of the bar, so the node, the batch line and the
job's events speak of the same phases and no progress fraction is written anywhere else.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .job import JobEvent

log = logging.getLogger("runcomfy.seedream")


class Phase(str, enum.Enum):
    """A phase of one run, in the order the batch line lists them: (name, as the line says it, bar from, bar to)."""

    label: str
    start: float
    end: float

    def __new__(cls, name: str, label: str, start: float, end: float) -> Phase:
        member = str.__new__(cls, name)
        member._value_ = name
        member.label, member.start, member.end = label, start, end
        return member

    DONE = "done", "done", 1.0, 1.0
    FAILED = "failed", "failed", 1.0, 1.0
    STOPPED = "stopped", "stopped", 1.0, 1.0
    DOWNLOADING = "downloading", "downloading", 0.80, 0.95
    GENERATING = "generating", "generating", 0.20, 0.80
    QUEUED = "queued", "queued at RunComfy", 0.15, 0.20
    UPLOADING = "uploading", "uploading", 0.03, 0.15  # encoding, then the submit
    SHARING = "sharing", "waiting for an identical item", 0.03, 0.03
    WAITING = "waiting", "waiting to upload", 0.03, 0.03
    PREPARING = "preparing", "preparing", 0.0, 0.03

    def at(self, within: float) -> float:
        """The bar's fraction `within` (0..1) of the way through this phase."""
        return self.start + (self.end - self.start) * min(1.0, max(0.0, within))

    @property
    def ended(self) -> bool:
        return self in (Phase.DONE, Phase.FAILED, Phase.STOPPED)


def generating_share(elapsed_s: float) -> float:
    """How far through generation to show the bar: the time it takes is unknown, so approach the end smoothly."""
    return 1.0 - math.exp(-max(0.0, elapsed_s) / 90.0)


@dataclass(frozen=True)
class Progress:
    text: str
    fraction: float  # 0..1 of the whole run
    phase: Phase = Phase.PREPARING


ProgressSink = Callable[[Progress], None]


class ProgressReporter:
    """Turns steps and job events into `Progress`, never letting the fraction go backwards. All of a run's
    warnings share one line ("Warning: …"), kept under every later message with the pinned lines (the cost
    estimate, what the prompt's count means)."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self.sink = sink
        self.fraction = 0.0
        self.phase = Phase.PREPARING
        self.pinned: dict[str, str] = {}
        self._warning_parts: dict[str, str] = {}

    @property
    def warnings(self) -> tuple[str, ...]:
        parts = sorted(self._warning_parts.items(), key=lambda part: part[0] == "records")  # paid work's trouble first
        return ("Warning: " + "; ".join(part for _, part in parts),) if parts else ()

    def pin(self, line: str, *, key: str) -> None:
        """Keep `line` under every later message."""
        self.pinned[key] = line
        self(line)

    def warn(self, part: str, *, key: str) -> None:
        """Something the run goes on despite; a part with the same `key` replaces the earlier one."""
        self._warning_parts[key] = part
        self(self.warnings[0])

    def __call__(self, text: str, phase: Phase | None = None, within: float = 0.0) -> None:
        """Show `text`; with `phase`, the run is now `within` (0..1) of the way through it."""
        if phase is not None:
            self.phase = phase
            self.fraction = max(self.fraction, phase.at(within))
        under = [line for line in (*self.warnings, *self.pinned.values()) if line and line != text]
        if under:
            text = "\n".join((text, *under))
        if self.sink is not None:
            try:
                self.sink(Progress(text, self.fraction, self.phase))
            except Exception:  # noqa: BLE001 - showing progress must never end a run, least of all a paid one
                log.debug("the progress sink failed", exc_info=True)

    def job_event(self, event: JobEvent) -> None:
        self(event.message, event.phase, event.within)
