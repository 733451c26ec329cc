"""The Optuna side of a sweep: storage, sampler, the study, its seed trial and stale trials."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import socket
from pathlib import Path
from typing import Iterator, Mapping

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from lenet_sweep import PROJECT_ROOT, stores

#: The notebook's configuration, enqueued as a study's first trial (keys not in the space are skipped).
SEED_TRIAL = {"optimizer.lr": 0.9, "optimizer.momentum": 0.0, "optimizer.nesterov": False,
              "model.activation": "sigmoid", "data.batch_size": 32, "data.normalize": False}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def default_storage() -> str:
    return str(PROJECT_ROOT / "multirun" / "optuna.journal")


def make_storage(url: str | None, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, on_stale=None) -> BaseStorage:
    """An RDB URL (``postgresql+psycopg://…``, ``sqlite:///…``) or a journal file path (default).

    RDB storages get Optuna's heartbeat: a trial whose sweeper stops beating for ``grace_period``
    seconds is failed by the next worker that looks (``on_stale`` then runs for it).
    """
    url = url or default_storage()
    if "://" in url:
        beat = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=on_stale) if heartbeat_interval else {}
        return stores.retry_race(lambda: RDBStorage(url, **beat))
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


@contextlib.contextmanager
def ask_lock(storage: BaseStorage, url: str | None, study_name: str) -> Iterator[None]:
    """Serialise "count the study's trials, then ask for one" across every worker of the study, so
    n_trials is exact: PostgreSQL's advisory lock, or Optuna's file lock beside a file storage."""
    url = url or default_storage()
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        key = int(hashlib.sha256(study_name.encode()).hexdigest()[:15], 16)
        with storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    path = url.removeprefix("sqlite:///") if "://" not in url or url.startswith("sqlite:///") else None
    if path is None:  # another database: Optuna's own atomic trial numbering, no extra lock
        yield
        return
    lock = JournalFileOpenLock(f"{path}.{study_name}.ask")
    lock.acquire()  # blocks; a lock left by a killed process is broken after 30 s
    try:
        yield
    finally:
        lock.release()


def load_trial(study_name: str, storage: str | None, pruner_cfg, number: int) -> optuna.Trial:
    """The running trial ``number``, rebuilt from the study's storage (in a training process)."""
    from hydra.utils import instantiate

    study = optuna.load_study(study_name=study_name, storage=make_storage(storage),
                              pruner=instantiate(pruner_cfg)())  # a constructor (_partial_)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.Trial(study, trial_id)


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


#: user attrs that belong to one attempt at a trial, not carried over to its retry
ATTEMPT_ATTRS = ("worker", "mlflow_run_id", "output_dir", "fail_reason")


def requeue(study: optuna.Study, trial: FrozenTrial, max_retry: int) -> None:
    """Queue a failed trial again with the same parameters, at most ``max_retry`` times (Optuna's
    ``RetryHeartbeatStaleTrialCallback``), without the failed attempt's owner, run and reason."""
    attempt = copy.deepcopy(trial)
    attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, attempt)


def foreign_running(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials whose sweeper is on another host."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if str(t.user_attrs.get("worker", "")).rpartition(":")[0] not in ("", socket.gethostname())]


def fail(study: optuna.Study, trial_id: int, reason: str) -> None:
    study._storage.set_trial_user_attr(trial_id, "fail_reason", reason[:1000])
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)


def count_finished(study: optuna.Study) -> int:
    """Finished trials that count towards n_trials (a failed trial that was retried does not)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    return sum(t.state in FINISHED and t.number not in retried for t in trials)


def count_running(study: optuna.Study) -> int:
    """Trials running anywhere: in this sweeper or any other worker of the study."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
