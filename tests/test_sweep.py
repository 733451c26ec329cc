"""The Optuna sweeper end to end: real subprocesses, a real journal storage and MLflow store in tmp."""

import math
import os
import pickle
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from conftest import (CALM, TINY, alive, all_runs, child_pids, compose_cfg, copy_stores, load,
                      parents_and_children, run_cli, sweep_args)
from lenet_sweep.sweep.lifecycle import TrialLifecycle
from lenet_sweep.sweep.loop import SweepLoop
from lenet_sweep.sweep.phases import SweepPhases
from lenet_sweep.sweep.plan import SweepPlan, search_space, sweep_settings


@pytest.mark.sweep
@pytest.mark.xdist_group("calm_sweep")
def test_three_trial_sweep_then_resume_adds_exactly_one(calm_sweep, tmp_path):
    proc, folder = calm_sweep.proc, calm_sweep.folder  # 3 trials of the CALM space (conftest)
    client = MlflowClient(calm_sweep.uri)
    study = load(folder)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.trials[0].params == {"optimizer.lr": 0.9, "optimizer.momentum": 0.0,
                                      "optimizer.nesterov": False}  # the notebook's
    assert "[sweep] trial 2 (3/3) COMPLETE" in proc.stdout
    # the console: one line per trial, no model table (trainer.verbose=0), no TensorFlow start-up lines
    assert "output shape" not in proc.stdout  # no model table
    assert not [line for line in proc.stdout.splitlines() if "mlflow_run_id=" in line]  # no run result lines
    assert not [word for word in ("cudart_stub", "absl::InitializeLog", "oneDNN") if word in proc.stderr]

    [parent], children = parents_and_children(client)
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.study_name"] == "lenet_sweep"
    # the default pruner (chosen for packed sweeps: docs/benchmarks.md, benchmarks/pruner_study.py)
    assert parent.data.tags["optuna.pruner"] == "successive_halving"
    assert sorted(c.info.run_name for c in children) == ["trial-0", "trial-1", "trial-2"]
    for run in (parent, *children):  # MLflow's own context: the UI's "Created by" and "Source"
        assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.type"] == "LOCAL"
        assert run.data.tags["mlflow.source.name"].endswith("__main__.py")
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["optuna.trial_state"] == "COMPLETE" and child.info.status == "FINISHED"
        number = int(child.data.tags["optuna.trial_number"])
        assert float(child.data.params["optimizer.lr"]) == study.trials[number].params["optimizer.lr"]
        assert child.data.metrics["val_accuracy"] == pytest.approx(study.trials[number].value)
        # optuna-dashboard shows the objective's name and links each trial to its run
        assert study.trials[number].user_attrs["mlflow_run_url"] == (
            f"#/experiments/{child.info.experiment_id}/runs/{child.info.run_id}")
    assert study.metric_names == ["val_accuracy"]
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best_trial_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    assert "trials.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # where the sweep's own time went: its phases, within its wall time
    phases = {k: v for k, v in parent.data.metrics.items() if k.startswith("sweep.")}
    parts = [f"sweep.{p}_seconds" for p in ("startup", "trials", "results", "report", "registration")]
    assert set(phases) == {*parts, "sweep.wall_seconds"} and all(v > 0 for v in phases.values())
    assert sum(phases[p] for p in parts) <= phases["sweep.wall_seconds"]

    results = yaml.safe_load((folder / "multirun" / "optimization_results.yaml").read_text())
    assert results["best_trial"] == study.best_trial.number
    assert results["best_value"] == pytest.approx(study.best_value)
    assert results["best_params"] == study.best_params
    assert results["output_dir"] == str(folder / "multirun" / str(study.best_trial.number))
    assert results["mlflow_run_id"] == parent.data.tags["best_trial_run_id"]
    assert sorted(p.name for p in (folder / "multirun").iterdir() if p.is_dir()) == ["0", "1", "2"]

    client = copy_stores(calm_sweep, tmp_path)  # the resume adds to a copy of the shared stores
    proc = run_cli(sweep_args(tmp_path, *CALM, n_trials=4), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]  # completed trials were not re-run
    parents, children = parents_and_children(client)
    assert len(parents) == 2 and len(children) == 4
    assert {p.data.tags["optuna.study_name"] for p in parents} == {"lenet_sweep"}
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir()) == ["0", "1", "2", "3"]


@pytest.mark.sweep
def test_failing_and_diverging_trials_are_fail_and_the_sweep_completes(tmp_path, client):
    proc = run_cli(sweep_args(
        tmp_path, "hydra/sweeper/sampler=grid", "hydra.sweeper.enqueue_seed_trial=false",
        "hydra.sweeper.max_failure_rate=1.0", "data.normalize=true",
        "optimizer.lr=choice(0.01,100000.0)", "optimizer.momentum=choice(0.0)",
        "optimizer.nesterov=choice(false)", "model.activation=choice(relu)",
        "model.kernel_size=choice(5,30)", n_trials=4), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path)
    by_params = {(t.params["optimizer.lr"], t.params["model.kernel_size"]): t for t in study.trials}
    assert by_params[(0.01, 5)].state == TrialState.COMPLETE
    diverged = by_params[(100000.0, 5)]
    assert diverged.state == TrialState.FAIL and "TrainingDiverged" in diverged.user_attrs["fail_reason"]
    for lr in (0.01, 100000.0):
        assert by_params[(lr, 30)].state == TrialState.FAIL and by_params[(lr, 30)].user_attrs["fail_reason"]
    [parent], children = parents_and_children(client)
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags["optuna.trial_state"] for c in children) == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    assert all(c.info.status in ("FINISHED", "FAILED") for c in children)
    assert {c.info.status for c in children if c.data.tags["optuna.trial_state"] == "FAIL"} == {"FAILED"}
    for child in children:  # the full traceback of every failure: an artifact, and the job's log file
        if child.data.tags["optuna.trial_state"] == "FAIL":
            text = client.download_artifacts(child.info.run_id, "error.txt", str(tmp_path))
            assert open(text).read().startswith("Traceback (most recent call last)")
    number = diverged.number
    assert "Traceback (most recent call last)" in (tmp_path / "multirun" / str(number) / "__main__.log").read_text()


@pytest.mark.sweep
def test_a_sweep_told_not_to_register_leaves_the_registry_empty(tmp_path, client):
    proc = run_cli(sweep_args(tmp_path, *CALM, n_trials=1), tmp_path)  # register=False
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[sweep] best trial 0" in proc.stdout and "[registry]" not in proc.stdout
    assert client.search_registered_models() == []
    [parent], _ = parents_and_children(client)
    assert not [k for k in parent.data.tags if k.startswith("registry.")]


@pytest.mark.sweep
def test_no_completed_trial_ends_with_a_clear_message(tmp_path, client):
    proc = run_cli(sweep_args(tmp_path, "model.kernel_size=choice(30)",
                              "hydra.sweeper.max_failure_rate=1.0", n_trials=2), tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no trial completed (2 FAIL)") and "No trials are completed yet" not in proc.stderr
    [parent], _ = parents_and_children(client)
    assert parent.info.status == "FAILED"


@pytest.mark.sweep
def test_too_many_failures_stop_the_sweep(tmp_path, client):
    proc = run_cli(sweep_args(tmp_path, "model.kernel_size=choice(30)",
                              "hydra.sweeper.max_failure_rate=0.2", n_trials=5), tmp_path)
    assert proc.returncode != 0
    assert "error: 2 trials failed, more than hydra.sweeper.max_failure_rate=0.2" in proc.stderr
    assert len(load(tmp_path).trials) == 2


@pytest.mark.parametrize("entry, fragment", [
    ("optimizer.lr=interval(1.0,0.5)", "optimizer.lr: 'interval(1.0,0.5)': lower bound"),
    ("hydra.sweeper.params.optimizer.lr='interval(1.0,0.5)'",
     "hydra.sweeper.params.optimizer.lr: 'interval(1.0,0.5)': lower bound"),
    ("hydra.sweeper.params.model.activation='shuffle(relu,sigmoid)'", "hydra.sweeper.params.model.activation"),
    ("hydra/sweeper/sampler=grid", "hydra/sweeper/sampler=grid needs choice"),
])
@pytest.mark.sweep
def test_bad_search_space_fails_before_any_trial(tmp_path, entry, fragment):
    proc = run_cli(sweep_args(tmp_path, entry), tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.sweep
def test_killed_sweep_leaves_no_running_trial_after_resume(tmp_path, client):
    args = sweep_args(tmp_path, "trainer.epochs=50", "data.train_limit=2000", n_trials=1)
    proc = subprocess.Popen([sys.executable, "-m", "lenet_sweep", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until the trial trains (its first epoch is logged)
            runs = [r for r in all_runs(client) if "mlflow.parentRunId" in r.data.tags]
            if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
                break
            time.sleep(1)
        else:
            pytest.fail("the trial never started")
        workers = child_pids(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert workers  # the pool's training worker: it must not outlive its sweeper
    deadline = time.time() + 30  # it notices within 0.5 s, then gives its job 15 s to close the run
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(alive(pid) for pid in workers)
    assert load(tmp_path).trials[0].state == TrialState.RUNNING

    proc = run_cli(sweep_args(tmp_path, n_trials=2), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trial 0 was left RUNNING by a dead sweeper (" in proc.stdout
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    killed = [r for r in all_runs(client) if r.info.run_name == "trial-0"][0]
    assert killed.info.status == "KILLED" and killed.data.tags["optuna.trial_state"] == "FAIL"
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]


def test_nan_or_non_numeric_objective_is_told_as_fail(tmp_path, client):
    from lenet_sweep.stores import open_optuna_storage

    study = optuna.create_study(study_name="s", storage=open_optuna_storage(str(tmp_path / "j.journal")))
    settings = sweep_settings({"n_trials": 3, "params": {}})
    exp = client.create_experiment("e")
    trials = TrialLifecycle(SweepPlan(settings, n_trials=3, sweep_dir=tmp_path), None, study, client, exp)
    for value, reason in [(math.nan, "the objective is nan"), (math.inf, "the objective is inf"),
                          ("high", "the run returned 'high', not a number")]:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        run_id = client.create_run(exp).info.run_id
        ret = JobReturn(status=JobStatus.COMPLETED, _return_value=value)
        assert trials.tell(trial, ret, run_id) == TrialState.FAIL
        frozen = study.trials[trial.number]
        assert frozen.user_attrs["fail_reason"] == reason
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and run.data.tags["optuna.fail_reason"] == reason


def test_command_line_fixes_or_sweeps_keys_of_the_config_space():
    params = sweep_settings({"params": {"optimizer": {"lr": "interval(0.01, 1.0)",
                                                       "momentum": "interval(0, 0.9)"}}})["params"]
    space, fixed, _ = search_space(params, compose_cfg([]),  # values checked against the job's config
                                   ["optimizer.lr=0.3", "trainer.epochs=1", "trainer.epochs=choice(1,12)"])
    assert set(space) == {"optimizer.momentum", "trainer.epochs"}  # lr is fixed by the command line
    assert space["trainer.epochs"].choices == (1, 12)  # a sweep wins over a fixed value of its key
    assert fixed == ["optimizer.lr=0.3"]



def test_a_failed_trials_error_unpickles_without_tensorflow():
    # the sweeper unpickles each failed job's exception; importing TensorFlow for it took 7 s
    from lenet_sweep.config import TrainingDiverged

    probe = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], input=pickle.dumps(TrainingDiverged("nan")),
                         capture_output=True, check=True)
    assert out.stdout.decode().strip() == "False"


def wait_until_training(client, proc, timeout=240):
    """Until the sweep's first trial has logged an epoch; its MLflow run."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        runs = [r for r in all_runs(client) if "mlflow.parentRunId" in r.data.tags]
        if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
            return runs[0]
        time.sleep(1)
    pytest.fail("the trial never started")


@pytest.mark.sweep
def test_sigterm_stops_in_one_line_and_retry_failed_reruns_the_trial(tmp_path, client):
    args = sweep_args(tmp_path, "trainer.epochs=50", "data.train_limit=2000", "hydra.sweeper.retry_failed=1",
                      n_trials=1)
    proc = subprocess.Popen([sys.executable, "-m", "lenet_sweep", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run = wait_until_training(client, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "[sweep] terminated (SIGTERM): running trials marked FAIL, their runs KILLED" in out
    assert "Traceback" not in err, err[-2000:]
    study = load(tmp_path)
    killed, retry = study.trials
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_reason"].startswith("sweep interrupted")
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == killed.number
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]  # the parent run too

    proc = run_cli(sweep_args(tmp_path, n_trials=1), tmp_path)  # the interrupted trial, again
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].params == killed.params


class RefusingLauncher:
    """A launcher whose every submit fails (a worker that cannot start, a broken cluster client)."""
    asynchronous = True

    def submit(self, overrides, idx):
        raise RuntimeError("cannot start a job")

    def flush(self):
        pass

    def shutdown(self, kill=False):
        pass


def test_a_failure_between_ask_and_launch_leaves_nothing_running(tmp_path, client):
    from lenet_sweep.stores import open_optuna_storage

    storage_url = str(tmp_path / "j.journal")
    study = optuna.create_study(study_name="s", storage=open_optuna_storage(storage_url))
    settings = sweep_settings({"n_trials": 2, "params": {}, "timeout": None, "max_failure_rate": 0.5,
                               "retry_failed": 0})
    # one trial at a time, unpacked, no pruning (the plan's defaults)
    plan = SweepPlan(settings, n_trials=2, storage_url=storage_url, sweep_dir=tmp_path / "multirun",
                     space={"x": optuna.distributions.FloatDistribution(0, 1)})
    trials = TrialLifecycle(plan, OmegaConf.create({"objective": "val_accuracy"}), study, client,
                            client.create_experiment("e"))
    trials.parent_id = client.create_run(trials.experiment_id).info.run_id
    with pytest.raises(RuntimeError, match="cannot start a job"):
        SweepLoop(trials, RefusingLauncher(), 1, SweepPhases()).run()
    [trial] = study.trials
    assert trial.state == TrialState.FAIL and "cannot start a job" in trial.user_attrs["fail_reason"]
    child = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert child.info.status == "KILLED" and child.data.tags["optuna.trial_state"] == "FAIL"


@pytest.mark.sweep
def test_lenet_pool_under_another_sweeper_starts_no_more_workers_than_its_size(tmp_path, client):
    from lenet_sweep import devices

    proc = run_cli(["-m", "hydra/launcher=lenet_pool", "optimizer.lr=0.1,0.2,0.3", *TINY,
                    f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.sweep.dir={tmp_path}/multirun"],
                   tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    size = devices.default_n_jobs([], os.cpu_count() or 1)  # Hydra's basic sweeper asks for 3 at once
    runs = all_runs(client)
    assert len(runs) == 3
    assert {r.data.tags["device"].rsplit(" of ", 1)[1] for r in runs} == {f"{size})"}
