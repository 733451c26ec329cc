"""Shared fixtures: the real config, a real MLflow store in tmp_path, the real CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from lenet_sweep import PROJECT_ROOT
from lenet_sweep.config import register

register()
CONF = str(PROJECT_ROOT / "conf")
TINY = ["trainer.epochs=1", "data.train_limit=512", "data.test_limit=500", "trainer.verbose=0"]


def compose_cfg(overrides=(), hydra_config=False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def client(mlflow_uri) -> MlflowClient:
    return MlflowClient(mlflow_uri)


def run_cli(args, cwd: Path, timeout=600, env=None) -> subprocess.CompletedProcess:
    """``python -m lenet_sweep ARGS`` in ``cwd``, outputs under it."""
    extra = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={cwd}/out"]
    return subprocess.run(
        [sys.executable, "-m", "lenet_sweep", *args, *extra],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def all_runs(client: MlflowClient, experiment="lenet_sweep"):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)
