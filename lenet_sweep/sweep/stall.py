"""A running trial that stops reporting is said, not killed.

Each trial reports its epochs to Optuna (its intermediate values; where it has none, as with several
objectives, the count of epochs reported: ``lenet_sweep.trial.PROGRESS_ATTR``). The sweeper looks
at the running trials every poll and remembers when each one's count of reports last grew; the seconds between two
reports are its epochs' durations. A trial silent for longer than ``factor`` times the median epoch
(of every trial this sweeper watched) and at least ``floor`` seconds is stalled: a worker stopped
(SIGSTOP, a swapping host, a hung file system), or an epoch far slower than the others. One line when
it stalls and one when it reports again; whatever kills it is left to the user.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from optuna.trial import FrozenTrial

from lenet_sweep.trial import PROGRESS_ATTR


@dataclass
class _Seen:
    reports: int
    since: float  # when ``reports`` last changed (or the trial was first seen)
    stalled: bool = False


@dataclass
class StallWatch:
    factor: float = 10.0
    floor: float = 60.0
    clock: Callable[[], float] = time.monotonic
    seen: dict[int, _Seen] = field(default_factory=dict)
    epochs: list[float] = field(default_factory=list)  # seconds between two reports, any trial
    ever: set[int] = field(default_factory=set)  # trials that stalled at some point
    #: True for a trial that has not begun (a packed worker's spare waiting for a slot): not watched yet
    waiting: Optional[Callable[[FrozenTrial], bool]] = None

    def limit(self) -> float:
        """Seconds of silence after which a trial counts as stalled."""
        return max(self.floor, self.factor * statistics.median(self.epochs)) if self.epochs else self.floor

    def check(self, running: Iterable[FrozenTrial]) -> list[str]:
        """Lines to say about ``running`` (the study's RUNNING trials) now: stalled, or reporting again."""
        now, lines, live = self.clock(), [], set()
        for trial in running:
            if self.waiting is not None and self.waiting(trial):
                continue  # its silence begins when it does
            live.add(trial.number)
            reports = len(trial.intermediate_values) or trial.system_attrs.get(PROGRESS_ATTR, 0)
            seen = self.seen.setdefault(trial.number, _Seen(reports, now))
            if reports != seen.reports:
                if seen.reports:  # the first report's wait holds the trial's start-up too
                    self.epochs.append((now - seen.since) / (reports - seen.reports))
                if seen.stalled:
                    lines.append(f"trial {trial.number} reports again after {now - seen.since:.0f} s "
                                 f"(epoch {reports})")  # epochs count from 1
                self.seen[trial.number] = _Seen(reports, now)
            elif not seen.stalled and now - seen.since > self.limit():
                seen.stalled = True
                self.ever.add(trial.number)
                lines.append(f"trial {trial.number} has reported nothing for {now - seen.since:.0f} s "
                             f"(an epoch takes {self._typical()}): its worker may be stopped or hung; "
                             f"nothing is killed")
        for number in set(self.seen) - live:  # ended
            del self.seen[number]
        return lines

    def _typical(self) -> str:
        return f"{statistics.median(self.epochs):.1f} s" if self.epochs else "unknown yet"
