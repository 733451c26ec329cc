"""One sweep invocation on its plan (:mod:`.plan`): the workers, the stores, the study, the MLflow
parent run (a child run per trial), the loop (:mod:`.loop`, each trial's life in :mod:`.lifecycle`),
then the results, the report and the winner's registration."""

from __future__ import annotations

import json
import logging
import signal
import sys
import warnings
from concurrent.futures import Future
from typing import Any, Callable, Mapping

import optuna
from hydra.core.plugins import Plugins
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from lenet_sweep import stores, tracking
from lenet_sweep.config import UserError, objective_text
from lenet_sweep.sweep import liveness, runs, study as studies
from lenet_sweep.sweep.ask_lock import ask_lock
from lenet_sweep.sweep.console import params_text, values_text
from lenet_sweep.sweep.lifecycle import SweepFailed, TrialLifecycle
from lenet_sweep.sweep.loop import SweepLoop
from lenet_sweep.sweep.phases import SweepPhases
from lenet_sweep.sweep.plan import SweepError, SweepPlan, make_plan, sweep_settings
from lenet_sweep.sweep.space import SearchSpaceError

# ask/tell with a heartbeat is what this sweeper does on purpose; constant_liar and
# fail_stale_trials are "experimental" in Optuna's terms only
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


log = logging.getLogger(__name__)


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
        with TrialLifecycle(plan, self.config, study, self.client, self.experiment_id) as trials:
            trials.reap()
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
                    self.parent_id = trials.parent_id = parent_id
                    try:
                        SweepLoop(trials, self.launcher, self.in_flight, self.phases).run()
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
