"""A run's model in MLflow's Keras format, the registry's champion gate, and ``mlflow models serve``:
real MLflow stores (SQLite in tmp, a real PostgreSQL-backed ``mlflow server``), real model files, a real server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from conftest import MLFLOW, TINY, all_runs, compose_cfg, free_port, stop, wait_healthy
from lenet_sweep import PROJECT_ROOT, data, registry
from lenet_sweep.training.train import train

#: learns something in one tiny epoch, with normalised pixels (the served model then scales them)
LEARNS = ["model.activation=relu", "optimizer.lr=0.1", "data.normalize=true"]
EXAMPLE = PROJECT_ROOT / "docs" / "example_request.json"


def real_test_images(n=500):
    folder = data.find_dir(None, download=False)
    (_, _), (x, y) = data.load_arrays(folder)
    return x[:n].reshape(-1, 28, 28, 1).astype(np.float32), y[:n]


def load_pyfunc(uri: str, model_uri: str):
    with _use_tracking_uri(uri):
        return mlflow.pyfunc.load_model(model_uri)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One tiny run (normalised pixels, sigmoid output) that registered itself: mlflow.register=true."""
    tmp = tmp_path_factory.mktemp("registered")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    train(compose_cfg([*TINY, *LEARNS, f"mlflow.tracking_uri={uri}", "mlflow.register=true"]))
    [run] = all_runs(MlflowClient(uri))
    return uri, run.info.run_id


@pytest.mark.xdist_group("registered")  # one worker trains the module fixture once
def test_a_run_registers_itself_and_its_model_predicts_the_runs_own_classes(registered, tmp_path):
    uri, run_id = registered
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["registry.decision"] == "first" and run.data.tags["registry.version"] == "1"
    champion = client.get_model_version_by_alias("lenet_sweep", "champion")
    assert str(champion.version) == "1" and champion.run_id == run_id
    assert champion.tags["run_id"] == run_id
    assert float(champion.tags["test_accuracy"]) == run.data.metrics["test_accuracy"]

    model = load_pyfunc(uri, "models:/lenet_sweep@champion")
    assert model.metadata.flavors.keys() >= {"keras", "python_function"}
    [spec] = model.metadata.get_input_schema().inputs
    assert spec.shape == (-1, 28, 28, 1) and spec.type == np.dtype("float32")

    x, y = real_test_images(500)  # raw 0-255 pixels: the served model scales them as the run did
    probs = model.predict(x)
    assert probs.shape == (500, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    classes = probs.argmax(axis=1)
    # the run's own test evaluation on the same 500 images: its confusion matrix and accuracy
    cm_path = client.download_artifacts(run_id, "figures/confusion_matrix.csv", str(tmp_path))
    run_cm = pd.read_csv(cm_path, index_col=0).to_numpy()
    ours = np.zeros((10, 10), int)
    np.add.at(ours, (y, classes), 1)
    assert (ours == run_cm).all()
    assert np.mean(classes == y) == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)
    assert run.data.metrics["test_accuracy"] > 0.3  # it learned: the comparison means something

    # the logged model is in its run's experiment (the experiment's Models tab lists it)
    model_id = champion.source.removeprefix("models:/")
    assert client.get_logged_model(model_id).experiment_id == run.info.experiment_id != "0"

    # registering the same run again makes no new version
    again = registry.register(client, run_id, "lenet_sweep")
    assert (again.version, again.decision) == ("1", "already champion")
    assert len(client.search_model_versions("name = 'lenet_sweep'")) == 1


def clone(client: MlflowClient, src_run_id: str, test_accuracy: float, tmp: Path, test_limit=None) -> str:
    """A finished run with the source run's config and weights and the given test accuracy
    (measured on ``test_limit`` test images, when given)."""
    src = client.get_run(src_run_id)
    run_id = client.create_run(src.info.experiment_id).info.run_id
    if test_limit is not None:
        client.log_param(run_id, "data.test_limit", test_limit)
    for name in ("config.yaml", "lenet.weights.h5"):
        client.log_artifact(run_id, client.download_artifacts(src_run_id, name, str(tmp)))
    client.log_metric(run_id, "test_accuracy", test_accuracy)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def parent(client: MlflowClient, experiment_id: str) -> str:
    run_id = client.create_run(experiment_id, run_name="sweep-test").info.run_id
    client.set_terminated(run_id, "FINISHED")
    return run_id


class Trial:  # what register_sweep_winner reads of an Optuna FrozenTrial
    def __init__(self, number, run_id):
        self.number, self.user_attrs = number, {"mlflow_run_id": run_id}


def champion_gate(client: MlflowClient, source_run_id: str, tmp: Path, capsys) -> None:
    """Three sweeps' winners in turn: the first becomes champion, a worse one does not move the
    alias, a better one does; each decision is on its sweep's parent run and printed in one line."""
    exp = client.get_run(source_run_id).info.experiment_id
    mlflow_cfg = compose_cfg(["mlflow.registered_model=gate"]).mlflow
    decisions, lines = [], []
    for n, acc in enumerate((0.50, 0.40, 0.60)):
        run_id, parent_id = clone(client, source_run_id, acc, tmp / str(n)), parent(client, exp)
        result = registry.register_sweep_winner(client, parent_id, Trial(n + 3, run_id), "study_x", mlflow_cfg)
        lines.append(capsys.readouterr().out.strip().splitlines()[-1])
        assert lines[-1] == result.line() and lines[-1].startswith("[registry] gate version")
        tags = client.get_run(parent_id).data.tags
        metrics = client.get_run(parent_id).data.metrics
        assert tags["registry.decision"] == result.decision and tags["registry.version"] == result.version
        assert metrics["registry.challenger_test_accuracy"] == pytest.approx(acc)
        assert metrics["registry_seconds"] > 0
        version = client.get_model_version("gate", result.version)
        assert version.tags == {"run_id": run_id, "test_accuracy": str(acc), "study_name": "study_x",
                                "trial_number": str(n + 3)}
        decisions.append((result.decision, str(client.get_model_version_by_alias("gate", "champion").version),
                          metrics.get("registry.champion_test_accuracy")))
    assert decisions == [("first", "1", None), ("kept", "1", 0.5), ("promoted", "3", 0.5)]
    assert "first champion: @champion -> version 1" in lines[0]
    assert "does not beat champion version 1 (test_accuracy=0.5000): @champion stays version 1" in lines[1]
    assert "beats champion version 1 (test_accuracy=0.5000): @champion -> version 3" in lines[2]

    # a better accuracy on other test images is no comparison: the alias stays, the line says why
    run_id, parent_id = clone(client, source_run_id, 0.99, tmp / "other", test_limit=100), parent(client, exp)
    result = registry.register_sweep_winner(client, parent_id, Trial(7, run_id), "study_x", mlflow_cfg)
    assert (result.decision, result.champion) == ("other test set", "3")
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(
        "was tested on another test set than champion version 3 (data.test_limit=100 vs None): accuracies "
        f"not compared, @champion stays version 3 ({result.seconds:.1f} s)")
    assert str(client.get_model_version_by_alias("gate", "champion").version) == "3"

    # a winner that cannot be registered (no weights) leaves the sweep alone: a line and a tag
    bare = client.create_run(exp).info.run_id
    client.log_metric(bare, "test_accuracy", 0.99)
    client.set_terminated(bare, "FINISHED")
    parent_id = parent(client, exp)
    assert registry.register_sweep_winner(client, parent_id, Trial(9, bare), "study_x", mlflow_cfg) is None
    assert "[registry] warning: the best trial 9" in capsys.readouterr().out
    assert "config.yaml" in client.get_run(parent_id).data.tags["registry.error"]
    assert str(client.get_model_version_by_alias("gate", "champion").version) == "3"
    assert all(r.info.status != "RUNNING" for r in all_runs(client))


@pytest.mark.xdist_group("registered")  # one worker trains the module fixture once
def test_champion_gate_on_sqlite(registered, tmp_path, capsys):
    uri, run_id = registered
    champion_gate(MlflowClient(uri), run_id, tmp_path, capsys)


@pytest.mark.postgres
@pytest.mark.xdist_group("tracking_server")
def test_registry_and_champion_on_a_tracking_server(tracking_server, tmp_path, capsys):
    server = tracking_server.url  # PostgreSQL-backed, shared with test_mlflow_server (conftest)
    train(compose_cfg([*TINY, *LEARNS, f"mlflow.tracking_uri={server}", "mlflow.register=true"]))
    client = MlflowClient(server)
    [run] = all_runs(client)
    assert run.data.tags["registry.decision"] == "first"
    champion_gate(client, run.info.run_id, tmp_path, capsys)

    x, _ = real_test_images(8)
    model = load_pyfunc(server, "models:/lenet_sweep@champion")
    assert model.predict(x).shape == (8, 10)

    # a rerun of a run the server does not have: one line naming the id and the URL
    from lenet_sweep import rerun

    with pytest.raises(SystemExit) as exit_:
        rerun.main(["0123456789abcdef0123456789abcdef", f"mlflow.tracking_uri={server}"])
    assert str(exit_.value.code) == (f"error: no MLflow run '0123456789abcdef0123456789abcdef' "
                                     f"in {server}")


@pytest.mark.xdist_group("registered")  # one worker trains the module fixture once
def test_mlflow_models_serve_answers_with_the_champions_classes(registered, tmp_path):
    uri, _ = registered
    port = free_port()
    log = tmp_path / "serve.log"
    exe = [str(MLFLOW)] if MLFLOW.exists() else [sys.executable, "-m", "mlflow"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*exe, "models", "serve", "-m", "models:/lenet_sweep@champion", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            # the virtualenv's bin on PATH, as after activating it: MLflow starts `uvicorn` from there
            env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, timeout=180, path="/ping")
        request = urllib.request.Request(f"{url}/invocations", data=EXAMPLE.read_bytes(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.array(json.loads(response.read())["predictions"])
    finally:
        stop(proc)

    # the request holds the first two real test images, as raw pixels
    x, y = real_test_images(2)
    assert (np.array(json.loads(EXAMPLE.read_text())["inputs"], np.float32) == x).all()
    own = load_pyfunc(uri, "models:/lenet_sweep@champion").predict(x)
    assert served.shape == (2, 10) and np.allclose(served.sum(axis=1), 1.0, atol=1e-5)
    assert (served.argmax(axis=1) == own.argmax(axis=1)).all()
    assert np.allclose(served, own, atol=1e-6)
