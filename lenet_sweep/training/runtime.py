"""A trial's runtime: where its time went (its phases), and what a process's trials share, made once
per process (a sweep worker runs many trials): the MLflow client, the data splits and their tensors.

Phases, each logged to the trial's run as the metric ``phase.<name>_seconds`` (at its last epoch's
step; 0 when it trained none) just before the run ends; they follow one another on the trial's own timeline:

- ``wait_slot``: from the sweeper writing the trial's payload (:class:`lenet_sweep.trial.TrialPayload`)
  to the trial's worker taking it up, less its own setup: for a packed trial, waiting in the worker's
  inbox and then for the epoch boundary where its slot takes it; for an unpacked one, the worker's
  queue and Hydra's job set-up (the worker's first TensorFlow import is counted in setup). Not for a
  single run.
- ``setup``: everything before its first training step: its config, its run's params and
  provenance, its reporter, its model and initial weights (packed: made by the worker's starter
  thread while the pack trains), a resumed trial's checkpoint.
- ``train``: its epochs (packed: from entering its slot to leaving it, epoch boundaries included).
- ``wait_record`` (packed): from leaving its slot to the worker's recorder thread taking it up
  (trials ending at one boundary are recorded one after the other).
- ``evaluate``: the test set's metrics.
- ``record``: what the run records after that (pictures, weights, Hydra's files), up to ending it.

A failed trial logs the phases it went through (the one it failed in included).

A packed trial also logs ``pack_width`` at each epoch: the lanes its pack computed that epoch
(:mod:`lenet_sweep.model.packed`: the width follows the live trials).

No TensorFlow here (:func:`tensors` imports it when called).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from lenet_sweep import data, tracking

PHASES = ("wait_slot", "setup", "train", "wait_record", "evaluate", "record")
#: metric: the lanes a packed trial's pack computed in an epoch (step = the epoch, from 1)
PACK_WIDTH = "pack_width"


def phase_metric(name: str) -> str:
    return f"phase.{name}_seconds"


class Phases:
    """A trial's phases in seconds: ``enter(name)`` ends the running phase and starts ``name``
    (None: none runs); ``add`` counts time measured elsewhere."""

    def __init__(self, running: str | None = "setup") -> None:
        self.seconds: dict[str, float] = {}
        self.running: str | None = None
        self._since = time.perf_counter()
        self.enter(running)

    def enter(self, name: str | None) -> float:
        """End the running phase (its seconds, 0 if none ran) and start ``name``."""
        if name is not None and name not in PHASES:
            raise ValueError(f"unknown phase {name}: one of {', '.join(PHASES)}")
        now = time.perf_counter()
        spent = now - self._since if self.running is not None else 0.0
        if self.running is not None:
            self.add(self.running, spent)
        self.running, self._since = name, now
        return spent

    def add(self, name: str, seconds: float) -> float:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name}: one of {', '.join(PHASES)}")
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)
        return seconds

    def metrics(self) -> dict[str, float]:
        """``phase.<name>_seconds`` of every phase ended so far."""
        return {phase_metric(k): v for k, v in self.seconds.items()}

    def log(self, client, run_id: str, step: int, quiet: bool = False) -> None:
        """End the running phase and log them all to the run at ``step`` (the last epoch trained, 0
        for none; ``quiet``: a failure is ignored, as for a trial already failing)."""
        self.enter(None)
        try:
            tracking.log_metrics(client, run_id, self.metrics(), step=step)
        except Exception:
            if not quiet:
                raise


def waited(written_at: float | None, started_at: float, busy: float = 0.0) -> float | None:
    """Seconds from the payload's writing (wall clock) to ``started_at``, less ``busy`` (the
    trial's own work meanwhile); None when the payload says nothing of its writing."""
    if written_at is None:
        return None
    return max(0.0, started_at - written_at - busy)


# -- once per process ---------------------------------------------------------------------------
_LOCK = threading.Lock()
_CLIENTS: dict[str, Any] = {}
_SPLITS: dict[tuple, data.Splits] = {}
_TENSORS: list[tuple[data.Splits, data.Splits]] = []  # (splits, their tensors): the last one


def client(mlflow_cfg):
    """One MLflow client per tracking URI in this process (the store checked, its tables made, once)."""
    uri = tracking.tracking_uri(mlflow_cfg)
    with _LOCK:
        if uri not in _CLIENTS:
            _CLIENTS[uri] = tracking.client_for(mlflow_cfg)
        return _CLIENTS[uri]


def splits(data_cfg) -> data.Splits:
    """:func:`lenet_sweep.data.load`, once per process for each data setting (:func:`lenet_sweep.data.cache_key`:
    Fashion-MNIST's while its files stay the same): the trials of a worker share the arrays (read-only)."""
    key = data.cache_key(data_cfg)
    with _LOCK:
        if key not in _SPLITS:
            _SPLITS.clear()  # one setting per worker in practice: keep memory to one copy
            _SPLITS[key] = data.load(data_cfg)
        return _SPLITS[key]


def tensors(splits_: data.Splits) -> data.Splits:
    """:func:`lenet_sweep.data.to_tensors` of ``splits_``, made once while they stay the same object."""
    with _LOCK:
        if not _TENSORS or _TENSORS[0][0] is not splits_:
            _TENSORS[:] = [(splits_, data.to_tensors(splits_))]
        return _TENSORS[0][1]
