"""Pruning and asynchronous scheduling through the long-lived worker pool (the default launcher),
unpacked (``hydra.sweeper.n_jobs=1``, or ``hydra.launcher.pack=1``: one trial per worker)."""

import optuna
import pytest
from optuna.trial import TrialState

from conftest import all_runs, run_cli, sweep_args
from lenet_sweep.stores import open_optuna_storage

pytestmark = pytest.mark.sweep  # every test here runs a sweep (make test-fast skips them)

NOTEBOOK = {"optimizer.momentum": 0.0, "optimizer.nesterov": False}


def enqueue(tmp_path, *trials):
    """Pre-create the study the sweep will resume, with these trials first in line."""
    study = optuna.create_study(study_name="lenet_sweep", direction="maximize",
                                storage=open_optuna_storage(f"{tmp_path}/optuna.journal"))
    for params in trials:
        study.enqueue_trial(params)
    return study


def intervals(study):
    return [(t.datetime_start, t.datetime_complete) for t in study.trials]


def test_median_pruner_prunes_a_bad_trial_in_optuna_and_mlflow(tmp_path, client):
    # the first learns (val_accuracy 0.41 after epoch 1 here; lr 0.5 died on some CPUs), the second cannot
    enqueue(tmp_path, {**NOTEBOOK, "optimizer.lr": 0.1, "model.activation": "relu"},
            {**NOTEBOOK, "optimizer.lr": 1e-7, "model.activation": "relu"})
    proc = run_cli(sweep_args(
        tmp_path, "hydra.sweeper.n_jobs=1", "hydra/sweeper/pruner=median",  # may prune from epoch 1 on
        "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=1",
        "trainer.epochs=3", "data.train_limit=2000", "data.normalize=true",
        "optimizer.lr=tag(log, interval(1e-8, 1.0))", n_trials=2), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="lenet_sweep", storage=open_optuna_storage(f"{tmp_path}/optuna.journal"))
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE and len(good.intermediate_values) == 3
    assert bad.state == TrialState.PRUNED and len(bad.intermediate_values) < 3  # stopped early
    stopped = max(bad.intermediate_values)
    run = next(r for r in all_runs(client) if r.info.run_name == "trial-1")
    assert run.info.status == "FINISHED"
    assert run.data.tags["optuna.trial_state"] == "PRUNED"
    # one epoch numbering, from 1 as Keras prints it ("Epoch 1/3"): Optuna's steps, MLflow's steps,
    # the console's line and the run's tag name the same epochs
    assert f"[sweep] trial 1 (2/2) PRUNED at epoch {stopped} |" in proc.stdout
    assert run.data.tags["optuna.pruned_at_epoch"] == str(stopped)
    for trial in (good, bad):
        run_id = trial.user_attrs["mlflow_run_id"]
        epochs = list(range(1, len(trial.intermediate_values) + 1))
        assert sorted(trial.intermediate_values) == epochs, trial.number
        for key in ("loss", "val_accuracy", "epoch_seconds"):
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == epochs, (trial.number, key)
        assert [m.step for m in client.get_metric_history(run_id, "test_accuracy")] == [epochs[-1]]
    assert "test_accuracy" in run.data.metrics  # the metrics it reached are recorded
    folders = {r.info.run_name: {a.path for a in client.list_artifacts(r.info.run_id)} for r in all_runs(client)}
    assert "figures" in folders["trial-0"] and "figures" not in folders["trial-1"]  # no pictures when pruned


def test_a_free_worker_starts_the_next_trial_without_waiting_for_the_slow_one(tmp_path, client):
    base = {**NOTEBOOK, "optimizer.lr": 0.1, "model.activation": "sigmoid"}
    enqueue(tmp_path, {**base, "trainer.epochs": 40}, *[{**base, "trainer.epochs": 1}] * 3)
    proc = run_cli(sweep_args(tmp_path, "hydra.sweeper.n_jobs=2", "hydra.launcher.pack=1", "hydra/sweeper/pruner=none",
                              "data.train_limit=2000", "trainer.epochs=choice(1,40)", n_trials=4), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="lenet_sweep", storage=open_optuna_storage(f"{tmp_path}/optuna.journal"))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert [t.params["trainer.epochs"] for t in study.trials] == [40, 1, 1, 1]
    slow_end = study.trials[0].datetime_complete
    # no batch barrier: trial 2 started on the free worker while trial 0 still ran
    assert study.trials[2].datetime_start < slow_end, intervals(study)
    events = sorted([(s, 1) for s, _ in intervals(study)] + [(e, -1) for _, e in intervals(study)],
                    key=lambda ev: (ev[0], ev[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2, intervals(study)  # n_jobs at once, never more
    devices = {r.data.tags["device"] for r in all_runs(client) if "mlflow.parentRunId" in r.data.tags}
    assert devices == {"CPU, 1 threads (worker 0 of 2)", "CPU, 1 threads (worker 1 of 2)"}
