"""The real CLI against a PostgreSQL-backed ``mlflow server`` that proxies artifacts, read back over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, all_runs, run_cli


@pytest.mark.postgres
@pytest.mark.xdist_group("tracking_server")
def test_cli_run_into_a_postgresql_backed_tracking_server(tmp_path, tracking_server):
    mlflow_server = tracking_server.url  # shared with test_registry: this test's runs in their own experiment
    # a password in the tracking URL: the server has no auth and ignores it, nothing may show it
    secret_url = mlflow_server.replace("http://", "http://lenet:s3cret@")
    proc = run_cli([*TINY, f"mlflow.tracking_uri={secret_url}", f"hydra.run.dir={tmp_path}/out",
                    "mlflow.experiment_name=server_cli"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "s3cret" not in proc.stdout + proc.stderr

    client = MlflowClient(mlflow_server)
    [run] = all_runs(client, "server_cli")
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert run.data.params["optimizer.lr"] == "0.9" and run.data.params["trainer.epochs"] == "1"
    assert "mlflow.tracking_uri" not in run.data.params
    assert {"val_accuracy", "test_accuracy", "loss"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
    assert f"mlflow_run_id={run.info.run_id}" in proc.stdout
    assert all("s3cret" not in v for v in {**run.data.params, **run.data.tags}.values())

    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lenet.weights.h5", "config.yaml", ".hydra"} <= paths
    weights = Path(client.download_artifacts(run.info.run_id, "lenet.weights.h5", str(tmp_path / "dl")))
    assert weights.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"  # an HDF5 file
    stored = [f for f in tracking_server.artifacts.rglob("lenet.weights.h5") if run.info.run_id in f.parts]
    assert len(stored) == 1 and stored[0].read_bytes() == weights.read_bytes()
