"""Shared fixtures: the real config, a real MLflow store in tmp_path, the real CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from lenet_sweep import CONF_DIR
from lenet_sweep.config import register

register()
CONF = str(CONF_DIR)
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


PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _pg_admin():
    """An autocommit connection to the server's ``postgres`` database; skip (fail under CI=true)
    when the server does not answer."""
    try:
        import psycopg

        return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                               autocommit=True, connect_timeout=5)
    except Exception as exc:  # ImportError, OperationalError
        reason = f"no PostgreSQL server at {PG_USER}@{PG_HOST}:{PG_PORT} ({type(exc).__name__}: {exc})"
        if _in_ci():
            pytest.fail(f"{reason}; CI is set, so this is an error, not a skip")
        pytest.skip(reason)


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for this test, as the SQLAlchemy URL that Optuna's
    RDBStorage and ``mlflow server --backend-store-uri`` both take:
    ``postgresql+psycopg://postgres@127.0.0.1:5432/lenet_<hex>``. Dropped afterwards."""
    yield from _fresh_database()


@pytest.fixture
def pg_mlflow_url():
    """A second fresh database, for an MLflow store beside an Optuna storage (both use alembic)."""
    yield from _fresh_database()


def _fresh_database():
    admin = _pg_admin()
    db = f"lenet_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{db}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"
    finally:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


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


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    """Still running (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
