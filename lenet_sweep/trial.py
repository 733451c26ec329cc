"""The sweeper ↔ job protocol: one typed payload per sweep trial, and per-epoch reports to Optuna.

The sweeper owns each trial: it asks Optuna for it, creates its MLflow child run, writes a
:class:`TrialPayload` into the job's own output folder (``<sweep dir>/<trial number>/.trial.json``),
launches the job with the trial's parameters as plain Hydra overrides, and tells Optuna the result.
The job — in a ``lenet_pool`` worker, or under any other Hydra launcher (Hydra's sweep folder is
shared with the job wherever it runs) — reads the payload, writes into the given run, and reports
each epoch's value through :class:`Reporter`, which answers whether the pruner stops it.

This module is all a job needs of the sweep: it does not import ``lenet_sweep.sweep``, and the user's
config schema carries no sweeper keys. No TensorFlow here.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PAYLOAD_FILE = ".trial.json"


@dataclass(frozen=True)
class TrialPayload:
    number: int  # the Optuna trial
    study_name: str
    storage: str  # the study's storage: RDB URL or journal file (may hold a password: the file is
    # 0600, and the sweeper removes it when it tells Optuna the trial's end)
    pruner: dict[str, Any]  # the pruner's config (``_target_``, ``_partial_``, options)
    monitor: str  # the per-epoch metric reported (the objective, or its val_ form; monitor_for)
    run_id: str  # the MLflow child run the job writes into
    # A retried trial: the failed attempt's job folder (its output_dir, <sweep dir>/<its number>). The
    # job continues from the checkpoint there (lenet_sweep.training.checkpoint), if any, into this payload's
    # run and trial: the earlier epochs are logged to the run and reported to the trial first.
    resume_from: str | None = None
    # When the sweeper wrote it (wall clock, seconds since the epoch; ``write`` sets it): the start of
    # the trial's wait for a worker (its run's ``phase.wait_slot_seconds``, lenet_sweep.training.runtime)
    written_at: float | None = None
    # Whether the monitored values go to Optuna as intermediate values, for the pruner to judge; false
    # (several objectives, or one no epoch reports): only the count of epochs reported (PROGRESS_ATTR)
    intermediate: bool = True

    def write(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / PAYLOAD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({**asdict(self), "written_at": self.written_at or time.time()}, f)
        except OSError as exc:  # a full disk: name the file, leave no half payload
            path.unlink(missing_ok=True)
            exc.filename = exc.filename or str(path)
            raise
        return path

    @staticmethod
    def remove(folder: str | os.PathLike) -> None:
        """Done with the trial (the sweeper told Optuna): the file, and the password it may hold, go."""
        (Path(folder) / PAYLOAD_FILE).unlink(missing_ok=True)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "TrialPayload | None":
        """The payload in a job's output folder; None for a job that is not a sweep trial."""
        path = Path(folder) / PAYLOAD_FILE
        if not path.is_file():
            return None
        fields = json.loads(path.read_text())
        fields.setdefault("written_at", path.stat().st_mtime)  # a payload of an older sweeper
        return cls(**fields)


@dataclass(frozen=True)
class Job:
    """What this process's run is, decided once at the entry (:mod:`lenet_sweep.__main__`) and
    passed down: Hydra's output folder and task overrides (None, "" outside Hydra: the Python API),
    whether it is one job of a multirun (a sweep: no progress bar, no result line), and its sweep
    trial's payload (None: not a trial of this project's sweeper, e.g. Hydra's basic sweeper)."""

    output_dir: Path | None = None
    overrides: str = ""
    multirun: bool = False
    payload: TrialPayload | None = None

    @classmethod
    def from_hydra(cls) -> "Job":
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return cls()
        hc = HydraConfig.get()
        output_dir, multirun = Path(hc.runtime.output_dir), hc.mode == RunMode.MULTIRUN
        return cls(output_dir, " ".join(hc.overrides.task), multirun,
                   TrialPayload.read(output_dir) if multirun else None)


#: what every epoch logs (lenet_sweep.training.record.EpochLogger's logs)
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
#: the trial's system attr counting its epochs reported when no intermediate value is (the stall watch's)
PROGRESS_ATTR = "epochs_reported"


def monitor_for(objectives: list[str]) -> tuple[str, bool]:
    """The per-epoch metric a trial reports, and whether Optuna gets it as an intermediate value (the
    pruner's): the objective, or its validation form for test_*. For several objectives (Optuna
    neither records nor prunes their trials' epochs) or one no epoch reports (train_seconds,
    num_params): the loss, counted as the trial's progress only."""
    if len(objectives) == 1:
        name = objectives[0]
        monitor = "val_" + name.removeprefix("test_") if name.startswith("test_") else name
        if monitor in EPOCH_METRICS:
            return monitor, True
    return "loss", False


_STORAGES: dict[str, Any] = {}
_STORAGES_LOCK = threading.Lock()


def storage(url: str):
    """The Optuna storage at ``url``, opened once per process (a journal file is read whole when
    opened; a worker's later trials read only what was appended since). Optuna's storages are
    thread-safe."""
    from lenet_sweep.stores import open_optuna_storage

    with _STORAGES_LOCK:
        if url not in _STORAGES:
            _STORAGES[url] = open_optuna_storage(url)
        return _STORAGES[url]


#: a packed trial's user attribute, "slot/size", set when it enters its slot (before, it waits)
PACK_ATTR = "pack"


class Reporter:
    """Reports a trial's per-epoch values to its study (Optuna's storage is built for writers in
    other processes) and asks the sweep's pruner whether to stop."""

    def __init__(self, payload: TrialPayload):
        import optuna
        from hydra.utils import instantiate

        self.payload = payload
        study = optuna.load_study(study_name=payload.study_name, storage=storage(payload.storage),
                                  pruner=instantiate(payload.pruner)())  # a constructor (_partial_)
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, payload.number)
        self.trial = optuna.Trial(study, trial_id)
        self.pruned_at: int | None = None
        self.epochs: set[int] = set()

    def entered(self, slot: int, size: int) -> None:
        """The trial took slot ``slot`` of a pack of ``size``: it trains from now on."""
        self.trial.set_user_attr(PACK_ATTR, f"{slot}/{size}")

    def report(self, epoch: int, value: float, ask: bool = True) -> bool:
        """Record ``value`` for ``epoch`` (counted from 1, as Keras prints it: the Optuna step); True
        when the pruner says stop. ``ask=False``: record only (a retried trial's epochs of its failed
        attempt; the pruner judges the first epoch it trains).
        Without intermediate values (``payload.intermediate``): the count of epochs reported only."""
        if not self.payload.intermediate:
            self.epochs.add(epoch)
            self.trial.study._storage.set_trial_system_attr(self.trial._trial_id, PROGRESS_ATTR, len(self.epochs))
            return False
        self.trial.report(float(value), step=epoch)
        if ask and self.trial.should_prune():
            self.pruned_at = epoch
        return self.pruned_at is not None

    def raise_if_pruned(self) -> None:
        """After the run is recorded: tell the sweeper the trial was pruned."""
        if self.pruned_at is not None:
            import optuna

            raise optuna.TrialPruned(f"pruned after epoch {self.pruned_at}")
