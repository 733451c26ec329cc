"""The sweep loop: ask Optuna for trials, launch them through Hydra's launcher, tell the results;
one MLflow parent run per invocation with a child run per trial."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from lenet_sweep import stores, tracking
from lenet_sweep.config import UserError, objective_text
from lenet_sweep.sweep import liveness, runs
from lenet_sweep.sweep.ask_lock import ask_lock
from lenet_sweep.sweep.console import SweepConsole, params_text, values_text
from lenet_sweep.sweep import study as studies
from lenet_sweep.sweep.heartbeat import Heartbeat, heartbeat_interval
from lenet_sweep.sweep.phases import SweepPhases
from lenet_sweep.sweep.stall import StallWatch
from lenet_sweep.sweep.pool import JobFailed, WorkerDied
from lenet_sweep.trial import PACK_ATTR, TrialPayload, monitor_for
from lenet_sweep.sweep.plan import SweepError, SweepPlan, make_plan, sweep_settings
from lenet_sweep.sweep.space import SearchSpaceError, format_override


# ask/tell with a heartbeat is what this sweeper does on purpose; constant_liar and
# fail_stale_trials are "experimental" in Optuna's terms only
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


log = logging.getLogger(__name__)


class SweepFailed(UserError, RuntimeError):
    """The sweep cannot go on (too many failures) or ended with no completed trial."""


def one_line_errors(call: Callable[[], Any]) -> Any:
    """``call()``, with the user's errors (and a disk that refuses a write) as one ``error:`` line and
    exit code 1: the one place where the sweeper's errors reach the terminal."""
    try:
        return call()
    except UserError as exc:
        sys.exit(f"error: {' '.join(str(exc).split())}")
    except OSError as exc:
        if tracking.write_error(exc) is None:
            raise
        sys.exit(f"error: {tracking.write_error(exc)}")


def _best(study):
    """The study's best trial so far (several objectives: its Pareto front, a list), or None."""
    if len(study.directions) > 1:
        return study.best_trials or None
    try:
        return study.best_trial
    except ValueError:
        return None


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


def _front(study) -> list:
    """The Pareto front, best on the first objective first (then on the next ones, then by number)."""
    signs = [-1 if d == optuna.study.StudyDirection.MAXIMIZE else 1 for d in study.directions]
    return sorted(study.best_trials, key=lambda t: ([s * v for s, v in zip(signs, t.values)], t.number))


class BatchLauncher:
    """A Hydra launcher without ``submit`` (basic, joblib, submitit): jobs collect into a batch that
    ``flush`` launches and waits for as a whole."""

    def __init__(self, launcher):
        self.launcher = launcher
        self.pending: list[tuple[Future, list[str], int]] = []

    def submit(self, overrides: list[str], idx: int) -> Future:
        future: Future = Future()
        self.pending.append((future, overrides, idx))
        return future

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if batch:
            returns = self.launcher.launch([o for _, o, _ in batch], initial_job_idx=batch[0][2])
            for (future, _, _), ret in zip(batch, returns):
                future.set_result(ret)

    def shutdown(self, kill: bool = False) -> None:
        self.pending = []
        if hasattr(self.launcher, "shutdown"):  # lenet_pool in batch mode: its workers
            self.launcher.shutdown(kill=kill)


class SweepRunner:
    """One sweep: :meth:`setup` (Hydra's launcher), :meth:`sweep` (the plan, the stores, the loop, the
    results). Everything decided before the first trial is in :attr:`plan` (frozen); the rest here is
    the sweep's running state: the MLflow client and parent run, the launcher, the console."""

    def __init__(self, settings_: Mapping[str, Any]):
        """``settings_``: ``hydra.sweeper``'s keys (those not given take the schema's defaults)."""
        self.settings = sweep_settings(settings_)
        self.phases = SweepPhases()
        self.plan: SweepPlan | None = None  # sweep() makes it

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        # the console is the sweep's (lenet_sweep.sweep.console): no store-creation or study-creation
        # notes from MLflow and Optuna in it
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.hydra_launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.pool_launcher = self.hydra_launcher if hasattr(self.hydra_launcher, "start") else None  # lenet_pool
        if getattr(self.hydra_launcher, "asynchronous", False):
            self.launcher = self.hydra_launcher
        else:  # any other Hydra launcher runs batches of n_jobs
            self.launcher = BatchLauncher(self.hydra_launcher)

    def _start_workers(self) -> None:
        """Start lenet_pool's workers for the plan's n_jobs and pack; ``in_flight``: the trials kept
        running (n_jobs, and a packed pool's spares)."""
        plan = self.plan
        self.in_flight = plan.n_jobs
        if self.pool_launcher is not None:
            pool = self.pool_launcher.start(plan.n_jobs, pack=plan.pack)
            self.in_flight = plan.n_jobs + getattr(pool, "spares", 0)

    def sweep(self, arguments: list[str]) -> dict[str, Any] | None:
        self.plan = plan = make_plan(self.settings, self.config, self.hydra_launcher, arguments)
        s = plan.settings
        try:
            self._start_workers()  # they import TensorFlow while the stores are checked
            stores.check_writable_dir(plan.sweep_dir, "hydra.sweep.dir")
            stores.check_optuna_storage(plan.storage_url)
            tracking.check_store(self.config.mlflow)  # reachable; creates nothing
            storage = stores.open_optuna_storage(plan.storage_url, s["heartbeat_interval"],
                                                 s["grace_period"])
            self._check_direction(storage)
            self.client = tracking.client_for(self.config.mlflow)
            study = optuna.create_study(study_name=s["study_name"], storage=storage, sampler=plan.sampler,
                                        directions=plan.directions, load_if_exists=True)
        except (SearchSpaceError, ValueError, TypeError) as exc:  # a store's own errors are UserErrors
            raise SweepError(str(exc)) from None
        for note in plan.notes:  # said once the sweep's inputs are known good (else one error line alone)
            log.info(note)
        if study.metric_names is None:  # optuna-dashboard and Optuna's plots name the objectives
            study.set_metric_names(self.plan.objectives)
        experiment = self.config.mlflow.experiment_name
        self.experiment_id = tracking.experiment_id(self.client, experiment)  # before any worker
        self._reap(study)
        runs.close_dead_parents(self.client, self.experiment_id, s["study_name"], liveness.dead_here)
        if s["enqueue_seed_trial"]:  # under the ask lock: sweepers starting together enqueue it once
            with ask_lock(study._storage, self.plan.storage_url, study.study_name):
                note = studies.enqueue_seed_trial(study, plan.space, grid=plan.sampler_name == "grid")
            if note:
                log.info(note)
        tags = {"optuna.study_name": s["study_name"], "optuna.storage": tracking.mask_url(self.plan.storage_url),
                "optuna.sampler": self.plan.sampler_name, "optuna.pruner": self.plan.pruner_name,
                "optuna.direction": ",".join(self.plan.directions),
                "optuna.search_space": json.dumps(plan.space_text, default=str),
                "sweep_dir": str(self.plan.sweep_dir), "worker": liveness.WORKER}
        try:
            with tracking.open_run(self.client, experiment, run_name=f"sweep-{s['study_name']}",
                                   tags=tags) as parent_id:
                self.parent_id = parent_id
                try:
                    self._loop(study, plan.space, plan.fixed)
                    return self._finish(study)  # the workers still up: one registers the winner
                finally:
                    self.launcher.shutdown()
        except KeyboardInterrupt:
            print("[sweep] interrupted (Ctrl-C): running trials marked FAIL, their runs KILLED",
                  flush=True)
            sys.exit(128 + signal.SIGINT)
        except SystemExit as exc:
            if exc.code == 128 + signal.SIGTERM:
                print("[sweep] terminated (SIGTERM): running trials marked FAIL, their runs KILLED",
                      flush=True)
            raise

    def _check_direction(self, storage) -> None:
        """A study is resumed only in the directions, and for the objectives, it was created with."""
        name = self.plan.settings["study_name"]
        if name not in optuna.study.get_all_study_names(storage):  # a new study
            return
        study = optuna.load_study(study_name=name, storage=storage)
        existing = [d.name.lower() for d in study.directions]
        where = f"study {name} in {tracking.mask_url(self.plan.storage_url)} was created"
        if existing != self.plan.directions:
            raise ValueError(f"{where} to {','.join(existing)}, not to {','.join(self.plan.directions)} "
                             f"(objective={objective_text(self.plan.objectives)}): give a new hydra.sweeper.study_name")
        if study.metric_names is not None and study.metric_names != self.plan.objectives:  # other metrics
            raise ValueError(f"{where} for objective={objective_text(study.metric_names)}, not "
                             f"objective={objective_text(self.plan.objectives)}: give a new hydra.sweeper.study_name")

    # -- the loop -----------------------------------------------------------------------------
    def _loop(self, study, space, fixed) -> None:
        """Keep ``in_flight`` trials running (``n_jobs``; packed, one more per worker, prepared while its
        pack trains); start the next one as soon as any finishes. When the
        budget is taken by other workers' running trials, wait for them (or their heartbeat to
        stop) rather than end early."""
        s, launcher = self.plan.settings, self.launcher
        deadline = time.monotonic() + s["timeout"] if s["timeout"] else None
        self.heartbeat = heartbeat = Heartbeat(study._storage)
        poll = heartbeat.interval or 2.0
        running: dict[Future, tuple[optuna.Trial, str]] = {}
        stalls = StallWatch(s["stall_factor"], s["stall_floor"],  # a packed trial: once in its slot
                            waiting=(lambda t: PACK_ATTR not in t.user_attrs) if self.plan.pack > 1 else None)
        self.console = SweepConsole(self.plan.n_trials, self.plan.objectives)
        started = None
        failures = 0
        try:
            while True:
                self._status(study, len(running))
                self._reap(study)
                while len(running) < self.in_flight and not self._timed_out(deadline) \
                        and not getattr(study.sampler, "exhausted", False):
                    started = self._start(study, space)
                    if started is None:
                        break
                    running[launcher.submit(self._overrides(*started, space, fixed),
                                            started[0].number)] = started
                    self.phases.trial_started()
                    started = None
                launcher.flush()
                if not running:
                    if studies.count_finished(study) >= self.plan.n_trials or self._timed_out(deadline) \
                            or not studies.count_running(study):
                        self.phases.trials_ended()
                        return
                    time.sleep(poll)  # the rest of the budget runs in other workers
                    continue
                done, _ = wait(running, timeout=poll, return_when=FIRST_COMPLETED)
                self._say_stalls(study, stalls, [t for f, (t, _) in running.items() if f not in done])
                for future in done:
                    trial, run_id = running.pop(future)
                    heartbeat.discard(trial._trial_id)
                    failures += self._tell(study, trial, future.result(), run_id) == TrialState.FAIL
                    if failures > s["max_failure_rate"] * self.plan.n_trials:
                        raise SweepFailed(
                            f"{failures} trials failed, more than hydra.sweeper.max_failure_rate="
                            f"{s['max_failure_rate']} of n_trials={self.plan.n_trials}; last reason: "
                            f"{study.trials[trial.number].user_attrs.get('fail_reason')}")
        except BaseException as exc:
            launcher.shutdown(kill=True)
            for trial, run_id in [*running.values(), *([started] if started else [])]:
                self._abandon(study, trial, run_id, exc)
            raise
        finally:
            heartbeat.stop()
            self.console.close()

    def _status(self, study, running: int) -> None:
        trials = study.get_trials(deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in (TrialState.PRUNED, TrialState.FAIL)}
        self.console.status(studies.count_finished(study), running, count[TrialState.PRUNED],
                            count[TrialState.FAIL], _best(study))

    def _say_stalls(self, study, stalls: StallWatch, trials: list[optuna.Trial]) -> None:
        """One line when a running trial stops reporting (and when it reports again); the sweep's
        run gets the numbers of the trials that stalled as its tag ``sweep.stalled_trials``."""
        before = len(stalls.ever)
        for line in stalls.check(study._storage.get_trial(t._trial_id) for t in trials):
            self.console.say(f"[sweep] {line}")
        if len(stalls.ever) > before:
            self.client.set_tag(self.parent_id, "sweep.stalled_trials", ",".join(map(str, sorted(stalls.ever))))

    def _timed_out(self, deadline: float | None) -> bool:
        if deadline is None or time.monotonic() <= deadline:
            return False
        if not getattr(self, "said_timeout", False):
            log.info(f"timeout of {self.plan.settings['timeout']} s reached: no new trial starts")
            self.said_timeout = True
        return True

    def _start(self, study, space) -> tuple[optuna.Trial, str] | None:
        """Ask for a trial if the study's budget allows one; None when it is all taken. A failure
        after the ask (the MLflow store, ...) fails that trial before it propagates."""
        with ask_lock(study._storage, self.plan.storage_url, study.study_name):
            if studies.count_finished(study) + studies.count_running(study) >= self.plan.n_trials:
                return None
            trial = study.ask(fixed_distributions=space)
            self.heartbeat.add(trial._trial_id)
            trial.set_user_attr("worker", liveness.WORKER)  # before any other sweeper can judge it
        run_id = None
        try:
            if self.plan.extend_space is not None:
                self._extend(trial)
            run_id = runs.create_child(self.client, self.experiment_id, self.parent_id,
                                       study.study_name, trial.number)
            trial.set_user_attr("mlflow_run_id", run_id)
            trial.set_user_attr("mlflow_run_url", runs.ui_path(self.client, self.experiment_id, run_id))
            trial.set_user_attr("output_dir", str(self.plan.sweep_dir / str(trial.number)))
            monitor, intermediate = monitor_for(self.plan.objectives)
            TrialPayload(number=trial.number, study_name=study.study_name, storage=self.plan.storage_url,
                         pruner=self.plan.pruner_config, monitor=monitor, run_id=run_id,
                         resume_from=self._resume_from(study, trial), intermediate=intermediate
                         ).write(self.plan.sweep_dir / str(trial.number))
        except BaseException as exc:
            self._abandon(study, trial, run_id, exc)
            raise
        return trial, run_id

    def _resume_from(self, study, trial) -> str | None:
        """A retried trial continues from the newest of its failed attempts that left a checkpoint
        (an attempt that died before its first epoch ended left none)."""
        from lenet_sweep.checkpoint import path_of  # no TensorFlow there

        storage = study._storage
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

    def _overrides(self, trial, run_id: str, space, fixed) -> list[str]:
        """The job's overrides: the trial's parameters (the space's, then any the custom search space
        suggested), the fixed ones, and its folder (where its :class:`TrialPayload` waits); nothing
        else of the sweep reaches the job's config."""
        keys = [*space, *(k for k in trial.params if k not in space)]
        return [*(format_override(k, trial.params[k]) for k in keys), *fixed,
                f"hydra.sweep.subdir={trial.number}"]

    def _tell(self, study, trial, ret: JobReturn, run_id: str) -> TrialState | None:
        """Tell Optuna how the trial ended; None when it failed because its worker died and was
        queued again (``retry_failed``): that attempt is no failure of the trial's own."""
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
        self._report(study, frozen)
        return None if retry else frozen.state

    def _abandon(self, study, trial, run_id: str | None, exc: BaseException) -> None:
        """The sweep itself was interrupted or failed around this trial: nothing may stay RUNNING.
        With ``retry_failed`` the trial is queued again with the same parameters. Never raises: the
        caller raises ``exc``, and the storage that failed (a full disk) must not keep the other
        in-flight trials' runs from being closed."""
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

    # -- trials other sweepers left behind ---------------------------------------------------
    def _reap(self, study) -> None:
        """Fail the trials of dead sweepers: on this host by process id, on any host by heartbeat
        (RDB storages). A file storage keeps no heartbeat: a trial another host left RUNNING there
        cannot be judged, and is named once."""
        for trial in liveness.fail_dead_local_trials(study):
            self._on_stale(study, trial)
        if heartbeat_interval(study._storage):
            reason = f"its sweeper stopped beating (no heartbeat for {self._grace(study)} s): presumed dead"
            for trial in liveness.fail_stale_trials(study, reason):
                self._on_stale(study, trial)
            return
        said = self.__dict__.setdefault("said_foreign", set())
        for trial in liveness.foreign_running(study):
            if trial.number not in said:
                said.add(trial.number)
                log.warning(f"trial {trial.number} runs on {trial.user_attrs.get('worker')}: this "
                            f"storage keeps no heartbeat, so if that host died the trial stays RUNNING; "
                            f"use an RDB storage (postgresql+psycopg://...) for sweepers on several hosts")

    def _on_stale(self, study, trial) -> None:
        """A trial of a dead sweeper was just marked FAIL (by process id, or by heartbeat): say why,
        end its runs, maybe queue it again."""
        reason = trial.user_attrs.get("fail_reason")
        log.warning(f"trial {trial.number} was left RUNNING by a dead sweeper "
                    f"({trial.user_attrs.get('worker')}): marked FAIL, {reason}")
        if trial.user_attrs.get("mlflow_run_id"):
            runs.close_child(self.client, trial.user_attrs["mlflow_run_id"], TrialState.FAIL,
                             reason, status="KILLED")
        dead = trial.user_attrs.get("worker")
        runs.close_dead_parents(self.client, self.experiment_id, study.study_name,
                                lambda worker: worker is not None and worker == dead)
        if self.plan.settings["retry_failed"]:
            studies.requeue(study, trial, self.plan.settings["retry_failed"])

    def _grace(self, study) -> int:
        """Seconds without a heartbeat after which a trial is failed (Optuna's default: 2 beats)."""
        return self.plan.settings["grace_period"] or 2 * study._storage.get_heartbeat_interval()

    def _report(self, study, trial) -> None:
        self.console.ended(trial, studies.count_finished(study), _best(study))

    # -- results ------------------------------------------------------------------------------
    def _finish(self, study) -> dict[str, Any]:
        client, parent_id, storage_url = self.client, self.parent_id, self.plan.storage_url
        table = study.trials_dataframe().rename(columns=lambda c: c.removeprefix("user_attrs_"))
        csv = self.plan.sweep_dir / "trials.csv"
        with self.phases.phase("results"), tracking.writing(csv):
            table.to_csv(csv, index=False)
            client.log_artifact(parent_id, str(csv))
        from lenet_sweep.report import write_sweep_report  # ranked table + plots; never raises

        with self.phases.phase("report"):
            write_sweep_report(study, client, parent_id, self.plan.sweep_dir)
        states = table["state"].value_counts().to_dict() if len(table) else {}
        if not states.get("COMPLETE"):
            failed = [t for t in study.trials if t.state == TrialState.FAIL]
            first = failed[0].user_attrs.get("fail_reason") if failed else None
            raise SweepFailed(f"no trial completed ({', '.join(f'{v} {k}' for k, v in states.items())})"
                              + (f"; first failure: {first}" if first else ""))
        if len(self.plan.objectives) == 1:
            best = study.best_trial
            results = {"study_name": study.study_name, "storage": tracking.mask_url(storage_url),
                       "direction": self.plan.directions[0], "best_trial": best.number, "best_value": best.value,
                       **self._best_of(best), "trials": states}
        else:
            best, results = self._front_results(study, states)
        path = self.plan.sweep_dir / "optimization_results.yaml"
        with self.phases.phase("results"), tracking.writing(path):
            OmegaConf.save(OmegaConf.create(results), path)
            client.log_artifact(parent_id, str(path))
        tracking.log_params(client, parent_id, {f"best.{k}": v for k, v in best.params.items()},
                            tags={"best_trial_number": best.number,
                                  "best_trial_run_id": results["mlflow_run_id"]})
        if len(self.plan.objectives) == 1:
            tracking.log_metrics(client, parent_id, {"best_value": best.value})
            print(f"[sweep] best trial {best.number}: value={best.value:.4f} params={best.params}")
        print(f"[sweep] mlflow run {results['mlflow_run_id']}, output {results['output_dir']}\n"
              f"[sweep] results: {path}", flush=True)
        from lenet_sweep import registry  # the winner as a new model version; never raises

        if self.plan.settings["register_winner"]:
            # one registration at a time per registered model among the sweepers of this storage: those
            # sharing a study register its winner once, and read the champion one after the other
            name = self.config.mlflow.get("registered_model") or "lenet_sweep"
            with self.phases.phase("registration"), ask_lock(study._storage, storage_url, f"register.{name}"):
                registry.register_sweep_winner(client, parent_id, best, study.study_name, self.config.mlflow,
                                               model_logger=self._model_logger())
        tracking.log_metrics(client, parent_id, self.phases.metrics())
        return results

    @staticmethod
    def _best_of(trial) -> dict[str, Any]:
        return {"best_params": trial.params, "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
                "output_dir": trial.user_attrs.get("output_dir")}

    def _front_results(self, study, states: dict[str, int]) -> tuple[Any, dict[str, Any]]:
        """Several objectives: the front's member best on the first objective (the one registered),
        and the results, which list the Pareto front as Hydra's Optuna sweeper does (``name: optuna``,
        ``solutions``: each member's params and values; here also its trial and run), best on the
        first objective first. The parent run gets the front as tags; the console a line per member."""
        front = _front(study)
        best = front[0]
        runs = [t.user_attrs.get("mlflow_run_id") or "" for t in front]
        self.client.set_tag(self.parent_id, "pareto_front_trials", ",".join(str(t.number) for t in front))
        self.client.set_tag(self.parent_id, "pareto_front_run_ids", ",".join(runs)[:5000])
        tracking.log_metrics(self.client, self.parent_id, {"pareto_front_size": len(front)})
        print(f"[sweep] Pareto front: {len(front)} of {states.get('COMPLETE', 0)} completed trials "
              f"({', '.join(f'{o} {d[:3]}' for o, d in zip(self.plan.objectives, self.plan.directions))})", flush=True)
        for t in front:
            print(f"[sweep]   trial {t.number}: {values_text(self.plan.objectives, t.values)} | {params_text(t.params)}",
                  flush=True)
        print(f"[sweep] best on {self.plan.objectives[0]} (the first objective) of the front: trial {best.number}"
              + (", the one registered" if self.plan.settings["register_winner"] else ""), flush=True)
        return best, {
            "name": "optuna", "study_name": study.study_name, "storage": tracking.mask_url(self.plan.storage_url),
            "objectives": self.plan.objectives, "directions": self.plan.directions,
            "solutions": [{"trial": t.number, "params": t.params, "values": t.values, "mlflow_run_id": run}
                          for t, run in zip(front, runs)],
            "best_on": self.plan.objectives[0], "best_trial": best.number, "best_values": best.values,
            **self._best_of(best), "trials": states}

    def _model_logger(self):
        """The winner's model logged by a sweep worker, which has TensorFlow loaded: this process never
        imports it (seconds, at the end of every sweep); a packed pool's worker ends its pack for it.
        Without a worker to ask (another launcher), in this process."""
        from lenet_sweep import registry

        call, uri = getattr(self.pool_launcher, "call", None), self.client.tracking_uri
        if call is None:
            return None

        def log_model(run_id: str) -> str:
            model_uri = call(registry.log_model_at, uri, run_id)
            return model_uri if model_uri is not None else registry.log_model(self.client, run_id)

        return log_model
