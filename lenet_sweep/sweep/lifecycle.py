"""A sweep trial's life in the sweeper, apart from the loop that paces trials (:mod:`.loop`): ask →
start (its MLflow child run, its :class:`~lenet_sweep.trial.TrialPayload`) → the job's overrides →
tell; or abandon, when the sweep itself fails around it. And the trials dead sweepers left RUNNING
(reap), failed, their runs closed, maybe queued again."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import FrozenTrial, TrialState

from lenet_sweep import tracking
from lenet_sweep.config import UserError
from lenet_sweep.sweep import liveness, runs, study as studies
from lenet_sweep.sweep.ask_lock import ask_lock
from lenet_sweep.sweep.console import SweepConsole
from lenet_sweep.sweep.heartbeat import Heartbeat, heartbeat_interval
from lenet_sweep.sweep.plan import SweepPlan
from lenet_sweep.sweep.pool import JobFailed, WorkerDied
from lenet_sweep.sweep.space import format_override
from lenet_sweep.trial import TrialPayload, monitor_for

log = logging.getLogger(__name__)


class SweepFailed(UserError, RuntimeError):
    """The sweep cannot go on (too many failures) or ended with no completed trial."""


def _values(returned, n: int) -> tuple[list[float] | None, str | None]:
    """A completed job's return value as the trial's ``n`` values (one per objective), or why not."""
    try:
        if n > 1 and isinstance(returned, str):
            raise TypeError(returned)
        values = [float(v) for v in returned] if n > 1 else [float(returned)]
    except (TypeError, ValueError):
        return None, f"the run returned {returned!r}, not {'a number' if n == 1 else f'{n} numbers'}"
    if len(values) != n:
        return None, f"the run returned {len(values)} values for {n} objectives"
    bad = next((v for v in values if not math.isfinite(v)), None)
    return (None, f"the objective is {bad}") if bad is not None else (values, None)


class TrialLifecycle:
    """The trials of one sweep invocation on one study: each asked for, started, told (or abandoned)
    here, its heartbeat beaten while it runs, its end said on the console. :attr:`parent_id` is the
    sweep's parent MLflow run, set once it is open (children are created under it)."""

    def __init__(self, plan: SweepPlan, config, study: optuna.Study, client, experiment_id: str):
        self.plan, self.config, self.study = plan, config, study
        self.client, self.experiment_id = client, experiment_id
        self.parent_id: str | None = None
        self.heartbeat = Heartbeat(study._storage)
        self.console = SweepConsole(plan.n_trials, plan.objectives)
        self._said_foreign: set[int] = set()

    def close(self) -> None:
        """No trial runs any more: the heartbeat stops, the console's status line goes."""
        self.heartbeat.stop()
        self.console.close()

    def __enter__(self) -> "TrialLifecycle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also when the sweep fails before its loop (the parent run, the seed trial)

    # -- ask → start → tell ------------------------------------------------------------------
    def start(self) -> tuple[optuna.Trial, str] | None:
        """Ask for a trial if the study's budget allows one; None when it is all taken. A failure
        after the ask (the MLflow store, ...) fails that trial before it propagates."""
        study, plan = self.study, self.plan
        with ask_lock(study._storage, plan.storage_url, study.study_name):
            if studies.count_finished(study) + studies.count_running(study) >= plan.n_trials:
                return None
            trial = study.ask(fixed_distributions=plan.space)
            self.heartbeat.add(trial._trial_id)
            trial.set_user_attr("worker", liveness.WORKER)  # before any other sweeper can judge it
        run_id = None
        try:
            if plan.extend_space is not None:
                self._extend(trial)
            run_id = runs.create_child(self.client, self.experiment_id, self.parent_id,
                                       study.study_name, trial.number)
            trial.set_user_attr("mlflow_run_id", run_id)
            trial.set_user_attr("mlflow_run_url", runs.ui_path(self.client, self.experiment_id, run_id))
            trial.set_user_attr("output_dir", str(plan.sweep_dir / str(trial.number)))
            monitor, intermediate = monitor_for(plan.objectives)
            TrialPayload(number=trial.number, study_name=study.study_name, storage=plan.storage_url,
                         pruner=plan.pruner_config, monitor=monitor, run_id=run_id,
                         resume_from=self._resume_from(trial), intermediate=intermediate
                         ).write(plan.sweep_dir / str(trial.number))
        except BaseException as exc:
            self.abandon(trial, run_id, exc)
            raise
        return trial, run_id

    def overrides(self, trial) -> list[str]:
        """The job's overrides: the trial's parameters (the space's, then any the custom search space
        suggested), the fixed ones, and its folder (where its :class:`TrialPayload` waits); nothing
        else of the sweep reaches the job's config."""
        space = self.plan.space
        keys = [*space, *(k for k in trial.params if k not in space)]
        return [*(format_override(k, trial.params[k]) for k in keys), *self.plan.fixed,
                f"hydra.sweep.subdir={trial.number}"]

    def tell(self, trial, ret: JobReturn, run_id: str) -> TrialState | None:
        """Tell Optuna how the trial ended, close its run, say it; the trial's state, or None when it
        failed because its worker died and was queued again (``retry_failed``): that attempt is no
        failure of the trial's own."""
        study = self.study
        self.heartbeat.discard(trial._trial_id)
        TrialPayload.remove(self.plan.sweep_dir / str(trial.number))
        reason, retry = None, False
        if ret.status == JobStatus.COMPLETED:
            values, reason = _values(ret.return_value, len(study.directions))
            if reason is None:
                study.tell(trial, values)
        elif isinstance(ret._return_value, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            exc = ret._return_value  # from lenet_pool already one line (JobFailed)
            one_line = isinstance(exc, (JobFailed, WorkerDied))  # already one line, no type needed
            reason = str(exc)[:1000] if one_line else tracking.error_line(exc, limit=1000)
            text = exc.traceback_text if isinstance(exc, JobFailed) else exc
            if text and tracking.ERROR_ARTIFACT not in {a.path for a in self.client.list_artifacts(run_id)}:
                tracking.log_traceback(self.client, run_id, text)  # failed before its run opened
            if isinstance(exc, WorkerDied):
                n = self.plan.settings["retry_failed"]
                retry = bool(n) and studies.retries_left(study._storage.get_trial(trial._trial_id), n)
                reason = (f"{exc}; " + (f"queued again with the same parameters (hydra.sweeper.retry_failed={n})"
                                        if retry else f"not retried (hydra.sweeper.retry_failed={n})"))[:1000]
        if reason is not None:
            studies.fail(study, trial._trial_id, reason)
        frozen = study._storage.get_trial(trial._trial_id)
        if retry:
            studies.requeue(study, frozen, self.plan.settings["retry_failed"])
        if frozen.state == TrialState.PRUNED and frozen.intermediate_values:
            self.client.set_tag(run_id, "optuna.pruned_at_epoch", max(frozen.intermediate_values))
        runs.close_child(self.client, run_id, frozen.state, reason)
        self.console.ended(frozen, studies.count_finished(study), studies.best(study))
        return None if retry else frozen.state

    def abandon(self, trial, run_id: str | None, exc: BaseException) -> None:
        """The sweep itself was interrupted or failed around this trial: nothing may stay RUNNING.
        With ``retry_failed`` the trial is queued again with the same parameters. Never raises: the
        caller raises ``exc``, and the storage that failed (a full disk) must not keep the other
        in-flight trials' runs from being closed."""
        study = self.study
        self.heartbeat.discard(trial._trial_id)
        TrialPayload.remove(self.plan.sweep_dir / str(trial.number))
        getattr(study.sampler, "forget", lambda number: None)(trial.number)
        reason = f"sweep interrupted ({tracking.error_line(exc, limit=300)})"
        try:
            if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                studies.fail(study, trial._trial_id, reason)
                if self.plan.settings["retry_failed"]:
                    studies.requeue(study, study._storage.get_trial(trial._trial_id), self.plan.settings["retry_failed"])
        except Exception as again:  # the study's storage may be what failed: the run is closed anyway
            log.debug(f"trial {trial.number} not marked FAIL: {again!r}")
        try:
            if run_id is not None:
                runs.close_child(self.client, run_id, TrialState.FAIL, reason, status="KILLED")
        except Exception as again:
            log.debug(f"trial {trial.number}'s run {run_id} not closed: {again!r}")

    def _resume_from(self, trial) -> str | None:
        """A retried trial continues from the newest of its failed attempts that left a checkpoint
        (an attempt that died before its first epoch ended left none)."""
        from lenet_sweep.training.checkpoint import path_of  # no TensorFlow there

        storage, study = self.study._storage, self.study
        for number in reversed(storage.get_trial(trial._trial_id).system_attrs.get("retry_history", [])):
            attempt = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
            folder = Path(attempt.user_attrs.get("output_dir") or self.plan.sweep_dir / str(number))  # another
            if path_of(folder).is_file():  # sweeper of the study may have run it, in its own folder
                return str(folder.resolve())
        return None

    def _extend(self, trial) -> None:
        """The custom search space's suggestions for ``trial``; its failure is the sweep's, in one line."""
        try:
            self.plan.extend_space(self.config, trial)
        except Exception as exc:
            raise SweepFailed(f"hydra.sweeper.custom_search_space={self.plan.settings['custom_search_space']} failed on "
                              f"trial {trial.number}: {tracking.error_line(exc, limit=500)}") from None

    # -- trials other sweepers left behind ---------------------------------------------------
    def reap(self) -> None:
        """Fail the trials of dead sweepers: on this host by process id, on any host by heartbeat
        (RDB storages). A file storage keeps no heartbeat: a trial another host left RUNNING there
        cannot be judged, and is named once."""
        study = self.study
        for trial in liveness.fail_dead_local_trials(study):
            self._on_stale(trial)
        if heartbeat_interval(study._storage):
            reason = f"its sweeper stopped beating (no heartbeat for {self._grace()} s): presumed dead"
            for trial in liveness.fail_stale_trials(study, reason):
                self._on_stale(trial)
            return
        for trial in liveness.foreign_running(study):
            if trial.number not in self._said_foreign:
                self._said_foreign.add(trial.number)
                log.warning(f"trial {trial.number} runs on {trial.user_attrs.get('worker')}: this "
                            f"storage keeps no heartbeat, so if that host died the trial stays RUNNING; "
                            f"use an RDB storage (postgresql+psycopg://...) for sweepers on several hosts")

    def _on_stale(self, trial: FrozenTrial) -> None:
        """A trial of a dead sweeper was just marked FAIL (by process id, or by heartbeat): say why,
        end its runs, maybe queue it again."""
        reason = trial.user_attrs.get("fail_reason")
        log.warning(f"trial {trial.number} was left RUNNING by a dead sweeper "
                    f"({trial.user_attrs.get('worker')}): marked FAIL, {reason}")
        if trial.user_attrs.get("mlflow_run_id"):
            runs.close_child(self.client, trial.user_attrs["mlflow_run_id"], TrialState.FAIL,
                             reason, status="KILLED")
        dead = trial.user_attrs.get("worker")
        runs.close_dead_parents(self.client, self.experiment_id, self.study.study_name,
                                lambda worker: worker is not None and worker == dead)
        if self.plan.settings["retry_failed"]:
            studies.requeue(self.study, trial, self.plan.settings["retry_failed"])

    def _grace(self) -> int:
        """Seconds without a heartbeat after which a trial is failed (Optuna's default: 2 beats)."""
        return self.plan.settings["grace_period"] or 2 * self.study._storage.get_heartbeat_interval()
