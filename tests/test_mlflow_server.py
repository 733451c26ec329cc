"""The real CLI against a PostgreSQL-backed ``mlflow server`` that proxies artifacts, read back over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, all_runs, run_cli

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120,
                 path: str = "/health") -> None:
    """Until the server ``proc`` answers ``url + path`` with 200 (``mlflow server``: /health,
    ``mlflow models serve``: /ping); fails the test if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"mlflow server did not answer {url}{path} within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its own worker processes
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def mlflow_server_on(backend_uri: str, tmp_path: Path):
    """A real ``mlflow server`` on ``backend_uri``, artifacts proxied to ``tmp/artifacts``; its URL."""
    port = free_port()
    log = tmp_path / "server.log"
    exe = [str(MLFLOW)] if MLFLOW.exists() else [sys.executable, "-m", "mlflow"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*exe, "server", "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture
def mlflow_server(tmp_path, pg_url):
    """``mlflow server`` on a fresh PostgreSQL database."""
    with mlflow_server_on(pg_url, tmp_path) as url:
        yield url


@pytest.mark.postgres
def test_cli_run_into_a_postgresql_backed_tracking_server(tmp_path, mlflow_server):
    # a password in the tracking URL: the server has no auth and ignores it, nothing may show it
    secret_url = mlflow_server.replace("http://", "http://lenet:s3cret@")
    proc = run_cli([*TINY, f"mlflow.tracking_uri={secret_url}", f"hydra.run.dir={tmp_path}/out"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "s3cret" not in proc.stdout + proc.stderr

    client = MlflowClient(mlflow_server)
    [run] = all_runs(client)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert run.data.params["optimizer.lr"] == "0.9" and run.data.params["trainer.epochs"] == "1"
    assert "mlflow.tracking_uri" not in run.data.params
    assert {"val_accuracy", "test_accuracy", "loss"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0]
    assert f"mlflow_run_id={run.info.run_id}" in proc.stdout
    assert all("s3cret" not in v for v in {**run.data.params, **run.data.tags}.values())

    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lenet.weights.h5", "config.yaml", ".hydra"} <= paths
    weights = Path(client.download_artifacts(run.info.run_id, "lenet.weights.h5", str(tmp_path / "dl")))
    assert weights.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"  # an HDF5 file
    stored = list((tmp_path / "artifacts").rglob("lenet.weights.h5"))
    assert len(stored) == 1 and stored[0].read_bytes() == weights.read_bytes()
