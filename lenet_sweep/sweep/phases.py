"""Where a sweep's own time went, recorded on its parent run as ``sweep.<phase>_seconds``: start-up
(the process's start to the first trial handed to a worker: imports, composition, stores, workers),
trials (the first trial handed out to the last one told), results (``trials.csv``,
``optimization_results.yaml``), report (table and plots), registration, and the whole wall time."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator


def process_age() -> float:
    """Seconds since this process started (Linux: /proc), 0 where that cannot be read."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class SweepPhases:
    def __init__(self) -> None:
        self.started = time.monotonic() - process_age()
        self.seconds: dict[str, float] = {}
        self.first_trial: float | None = None

    def trial_started(self) -> None:
        if self.first_trial is None:
            self.first_trial = time.monotonic()
            self.seconds["startup"] = self.first_trial - self.started

    def trials_ended(self) -> None:
        if self.first_trial is not None:
            self.seconds["trials"] = time.monotonic() - self.first_trial

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - start

    def metrics(self) -> dict[str, float]:
        """``sweep.<phase>_seconds`` for every phase so far, and ``sweep.wall_seconds``."""
        return {**{f"sweep.{k}_seconds": v for k, v in self.seconds.items()},
                "sweep.wall_seconds": time.monotonic() - self.started}
