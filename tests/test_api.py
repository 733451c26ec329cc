"""The Python API (``lenet_sweep.api``): it returns what the command line records. Real MLflow store,
real Optuna journal, a real sweep subprocess."""

import pytest
from mlflow.tracking import MlflowClient

from conftest import CALM, TINY, all_runs, load, sweep_args
import lenet_sweep
from lenet_sweep import api
from lenet_sweep.config import UserError


def test_run_returns_the_metrics_and_run_it_recorded(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = lenet_sweep.run([*TINY, f"mlflow.tracking_uri={uri}", "optimizer.lr=0.5"])
    [run] = all_runs(MlflowClient(uri))
    assert result.run_id == run.info.run_id and result.tracking_uri == uri
    assert run.info.status == "FINISHED" and run.data.params["optimizer.lr"] == "0.5"
    for name in ("test_accuracy", "test_loss", "val_accuracy", "loss"):
        assert result.metrics[name] == run.data.metrics[name]  # the same numbers, not recomputed
    assert run.data.tags["mlflow.user"]  # made with MLflow's context, as the command line's runs are


@pytest.mark.parametrize("override, line", [
    ("optimizer.lr=-1", "optimizer.lr=-1.0 is invalid: must be > 0 (for example optimizer.lr=0.1)"),
    ("model.activation=tanhh", "model.activation"),
])
def test_run_refuses_a_bad_value_in_the_command_lines_words_and_records_nothing(tmp_path, override, line):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(UserError) as info:
        api.run([*TINY, f"mlflow.tracking_uri={uri}", override])
    assert line in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "mlflow.db").exists() or not all_runs(MlflowClient(uri))


@pytest.mark.sweep
def test_sweep_returns_the_study_s_best_trial(tmp_path, client, monkeypatch):
    args = sweep_args(tmp_path, *CALM, n_trials=2)[2:]  # less "-m hydra/sweeper=optuna": the API adds it
    result = api.sweep([*args, f"hydra.run.dir={tmp_path}/out"], cwd=tmp_path)
    study = load(tmp_path)
    assert (result.best_trial, result.best_value, result.best_params) == (
        study.best_trial.number, study.best_value, study.best_params)
    assert result.best_run_id == study.best_trial.user_attrs["mlflow_run_id"]
    assert client.get_run(result.best_run_id).data.metrics["val_accuracy"] == pytest.approx(result.best_value)
    assert result.trials == {"COMPLETE": 2} and result.results_file == str(tmp_path / "multirun" /
                                                                         "optimization_results.yaml")

    with pytest.raises(UserError) as info:  # a sweep that cannot start: its one error line
        api.sweep([*args, "hydra.sweeper.n_trials=0"], cwd=tmp_path)
    assert str(info.value).startswith("hydra.sweeper.n_trials=0 is invalid")
