"""One training run end to end: the CLI as a subprocess, read back from a real MLflow store."""

import math

import keras
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, all_runs, compose_cfg, run_cli
from lenet_sweep.model import build_lenet
from lenet_sweep.training.train import train


@pytest.mark.xdist_group("single_run")
def test_cli_run_lands_in_mlflow(single_run, tmp_path):
    proc = single_run.proc  # TINY, optimizer.lr=0.5 (conftest)
    client = MlflowClient(single_run.uri)
    [run] = all_runs(client)
    assert run.info.status == "FINISHED"
    assert f"mlflow_run_id={run.info.run_id}" in proc.stdout and "test_accuracy=" in proc.stdout
    p = run.data.params
    assert (p["optimizer.lr"], p["optimizer.momentum"], p["model.activation"]) == ("0.5", "0.0", "sigmoid")
    assert p["num_params"] == "44426" and p["data.train_limit"] == "512" and p["precision"] == "float32"
    assert "mlflow.tracking_uri" not in p
    assert run.data.tags["hydra.overrides"].split()[:2] == TINY[:2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0 and run.data.metrics["test_loss"] > 0
    assert run.data.metrics["samples_per_second"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lenet.weights.h5", "config.yaml", "model_summary.txt", ".hydra"} <= artifacts
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert ".hydra/overrides.yaml" in hydra_files
    weights = client.download_artifacts(run.info.run_id, "lenet.weights.h5", str(tmp_path))
    model = build_lenet(compose_cfg().model)  # the weights load back into the same architecture
    model.load_weights(weights)
    # the run's artifacts live beside the database, not in the working directory's Hydra folder
    assert (single_run.folder / "mlruns").is_dir() and not (single_run.folder / "out" / "mlruns").exists()


def test_diverging_run_fails_fast_and_is_marked_failed(tmp_path, mlflow_uri, client):
    proc = run_cli([*TINY, "trainer.epochs=3", f"mlflow.tracking_uri={mlflow_uri}",  # < 4 chunks: no XLA timing
                    "model.activation=relu", "optimizer.lr=1000"], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: loss is nan after epoch 1")
    [run] = all_runs(client)
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["error"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 1  # stopped after one epoch
    # the console and the error tag get one line; the traceback goes to error.txt and the job's log
    error_txt = open(client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))).read()
    assert error_txt.startswith("Traceback (most recent call last)") and "TrainingDiverged" in error_txt
    assert "Traceback" not in proc.stderr
    assert "Traceback (most recent call last)" in (tmp_path / "out" / "__main__.log").read_text()


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


def tiny_cfg(mlflow_uri, *extra):
    return compose_cfg([*TINY, f"mlflow.tracking_uri={mlflow_uri}", *extra])


def test_interrupted_run_is_killed_and_errors_fail(mlflow_uri, client):
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(mlflow_uri), callbacks=[Interrupt()])
    [run] = all_runs(client)
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["error"]


def test_same_seed_same_metrics(mlflow_uri):
    first = train(tiny_cfg(mlflow_uri, "seed=7"))
    second = train(tiny_cfg(mlflow_uri, "seed=7"))
    timing = {"epoch_seconds", "samples_per_second", "train_seconds"}  # train_seconds: their sum
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in second.items() if k not in timing}
    assert all(math.isfinite(v) for v in first.values())


@pytest.mark.real_data
def test_one_epoch_on_all_images_learns(mlflow_uri):
    metrics = train(compose_cfg(["trainer.epochs=1", "trainer.verbose=0",
                                 f"mlflow.tracking_uri={mlflow_uri}"]))
    assert metrics["val_accuracy"] > 0.5 and metrics["test_accuracy"] > 0.5
