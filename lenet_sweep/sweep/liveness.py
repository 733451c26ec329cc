"""Which sweepers are alive: each trial records its sweeper as ``host:pid`` (:data:`WORKER`); a
trial whose sweeper process on this host is gone is failed at once (any storage). Other hosts are
judged by Optuna's heartbeat (:mod:`lenet_sweep.sweep.heartbeat`, RDB storages)."""

from __future__ import annotations

import os
import socket

import optuna
from optuna.trial import FrozenTrial, TrialState

from lenet_sweep.sweep.study import fail

#: This sweeper, as its trials' ``worker`` user attribute records it.
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def dead_here(worker: str | None) -> bool:
    """Was ``host:pid`` a process on this host that no longer runs?"""
    host, _, pid = str(worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def fail_dead_local_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Mark FAIL the RUNNING trials whose sweeper process on this host is gone (any storage; on
    other hosts Optuna's heartbeat does this for RDB storages)."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if dead_here(t.user_attrs.get("worker"))]
    for trial in stale:
        fail(study, trial._trial_id, "its sweeper process died (killed or crashed)")
    return [study._storage.get_trial(t._trial_id) for t in stale]


def foreign_running(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials whose sweeper is on another host."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if str(t.user_attrs.get("worker", "")).rpartition(":")[0] not in ("", socket.gethostname())]


def fail_stale_trials(study: optuna.Study, reason: str) -> list[FrozenTrial]:
    """Mark FAIL, with ``reason``, the RUNNING trials whose heartbeat is older than the storage's grace
    period (RDB storages), on any host. Optuna's ``fail_stale_trials`` does the same but fails the trial
    first, after which no reason can be recorded on it; another sweeper failing it at the same time
    is fine (the storage refuses the second change)."""
    storage = study._storage
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:  # another sweeper was first
            pass
    return failed
