"""The training side of pruning: a Keras callback that reports each epoch to the Optuna trial.

A small callback of our own rather than optuna-integration's KerasPruningCallback: that one raises
``TrialPruned`` inside ``fit``, which would skip the test evaluation and leave the run's last metrics
unlogged. This one stops ``fit`` cleanly (``model.stop_training``); the entry point raises
``TrialPruned`` after the run is recorded, and the sweeper tells Optuna PRUNED.
"""

from __future__ import annotations

import keras
import optuna


class PruningCallback(keras.callbacks.Callback):
    def __init__(self, trial: optuna.Trial, monitor: str):
        super().__init__()
        self.trial, self.monitor = trial, monitor
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            self.model.stop_training = True

    def raise_if_pruned(self) -> None:
        if self.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {self.pruned_at}")


def monitor_for(objective: str) -> str:
    """The per-epoch metric a pruner watches: the objective, or its validation form for test_*."""
    return "val_" + objective[len("test_"):] if objective.startswith("test_") else objective


def trial_callback(cfg, sweeper_cfg) -> PruningCallback:
    """The callback for the trial this run is (``cfg.trial_number``) in the sweeper's study."""
    from lenet_sweep.sweep.study import load_trial

    trial = load_trial(sweeper_cfg.study_name, sweeper_cfg.storage, sweeper_cfg.pruner,
                       cfg.trial_number)
    return PruningCallback(trial, monitor_for(cfg.objective))
