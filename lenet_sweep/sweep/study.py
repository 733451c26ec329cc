"""A sweep's study: its seed trial, what counts towards ``n_trials``, failing and re-queuing trials."""

from __future__ import annotations

import copy
from typing import Mapping

import optuna
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from lenet_sweep import CONF_DIR
from lenet_sweep.config import flatten



def _notebook() -> dict:
    """The notebook's model, optimizer and data values, from ``experiment=seed`` (written once, in
    ``conf/experiment/seed.yaml``); its epochs and data limits are not a point to search."""
    seed = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / "seed.yaml"))
    flat = flatten({k: seed[k] for k in ("model", "optimizer", "data")})
    return {k: v for k, v in flat.items() if k != "data.train_limit"}


#: The notebook's configuration, enqueued as a study's first trial (keys not in the space are skipped).
SEED_TRIAL = _notebook()
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def contains(dist: BaseDistribution, value) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def enqueue_seed_trial(study: optuna.Study, space: Mapping[str, BaseDistribution],
                       grid: bool = False) -> str | None:
    """Trial 0 of a new study: the notebook's values for the keys the space searches (the sampler
    draws the rest). A grid gets no extra trial: Optuna's grid sampler would not count it as a visited
    point and run that point again. Returns a line to show, if any."""
    if study.get_trials(deepcopy=False):
        return None
    params = {k: v for k, v in SEED_TRIAL.items() if k in space and contains(space[k], v)}
    if grid:
        if len(params) == len(space):
            return "grid: the notebook's configuration is one of the grid's points (no extra seed trial)"
        missing = ", ".join(sorted(set(space) - set(params)))
        return (f"grid: no seed trial, the notebook's configuration is not a point of this grid "
                f"({missing})")
    if params:
        study.enqueue_trial(params, user_attrs={"seed_trial": True}, skip_if_exists=True)
    return None


#: user attrs that belong to one attempt at a trial, not carried over to its retry
ATTEMPT_ATTRS = ("worker", "mlflow_run_id", "output_dir", "fail_reason")


def retries_left(trial: FrozenTrial, max_retry: int) -> bool:
    """Whether a failed ``trial`` may be queued again: its chain of attempts (Optuna's
    ``retry_history``, this one included) is at most ``max_retry`` retries long."""
    return len(trial.system_attrs.get("retry_history", [])) < max_retry


def previous_attempt(trial: FrozenTrial) -> int | None:
    """The number of the failed trial this one retries (the latest of its chain), if any."""
    return (trial.system_attrs.get("retry_history") or [None])[-1]


def requeue(study: optuna.Study, trial: FrozenTrial, max_retry: int) -> None:
    """Queue a failed trial again with the same parameters, at most ``max_retry`` times (Optuna's
    ``RetryHeartbeatStaleTrialCallback``), without the failed attempt's owner, run and reason."""
    attempt = copy.deepcopy(trial)
    attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, attempt)


def fail(study: optuna.Study, trial_id: int, reason: str) -> None:
    study._storage.set_trial_user_attr(trial_id, "fail_reason", reason[:1000])
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)


def count_finished(study: optuna.Study) -> int:
    """Finished trials that count towards n_trials (a failed trial that was retried does not)."""
    trials = study.get_trials(deepcopy=False)
    # every attempt a retry replaced (its retry_history; ``failed_trial`` names only the first)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return sum(t.state in FINISHED and t.number not in retried for t in trials)


def count_running(study: optuna.Study) -> int:
    """Trials running anywhere: in this sweeper or any other worker of the study."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def best(study: optuna.Study):
    """The study's best trial so far (several objectives: its Pareto front, a list), or None."""
    if len(study.directions) > 1:
        return study.best_trials or None
    try:
        return study.best_trial
    except ValueError:
        return None
