"""Shared fixtures: the real config, a real MLflow store in tmp_path, the real CLI as a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

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


#: ``python -m lenet_sweep`` as ``-m`` runs it (runpy), saying at exit whether TensorFlow was imported
TF_PROBE = ("import atexit, runpy, sys; atexit.register(lambda: print('[probe] tensorflow imported:', "
            "'tensorflow' in sys.modules, flush=True)); runpy.run_module('lenet_sweep', run_name='__main__', "
            "alter_sys=True)")


def run_cli(args, cwd: Path, timeout=600, env=None, probe_tensorflow=False) -> subprocess.CompletedProcess:
    """``python -m lenet_sweep ARGS`` in ``cwd``, outputs under it. ``probe_tensorflow``: its last
    line of stdout says whether this process (not its workers) imported TensorFlow (TF_PROBE)."""
    extra = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={cwd}/out"]
    entry = ["-c", TF_PROBE] if probe_tensorflow else ["-m", "lenet_sweep"]
    return subprocess.run(
        [sys.executable, *entry, *args, *extra],
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


def sweep_args(tmp_path, *extra, n_trials=3, register=False, pruner="median"):
    """A sweep on tiny data whose stores (journal, SQLite, sweep folder) are all in ``tmp_path``.
    ``register``: the sweep registers its winner, as by default (seconds of a worker's time at its end,
    so only the tests that look at the registry ask for it). ``pruner``: unless ``extra`` chooses one,
    the median pruner (its 5 start-up trials: a test's few trials are never pruned unless the test asks,
    so no pruned trial passes for a scheduling one); None: the default (successive halving, which may
    prune from epoch 2 on; the session's calm sweep runs under it)."""
    if pruner and not any(arg.startswith("hydra/sweeper/pruner=") for arg in extra):
        extra = (f"hydra/sweeper/pruner={pruner}", *extra)
    return ["-m", "hydra/sweeper=optuna", f"hydra.sweeper.n_trials={n_trials}", *TINY,
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"hydra.sweeper.storage={tmp_path}/optuna.journal", f"hydra.sweep.dir={tmp_path}/multirun",
            f"hydra.sweeper.register_winner={str(register).lower()}", *extra]


def load(tmp_path, name="lenet_sweep"):
    import optuna

    from lenet_sweep.stores import open_optuna_storage
    return optuna.load_study(study_name=name, storage=open_optuna_storage(f"{tmp_path}/optuna.journal"))


def parents_and_children(client):
    runs = all_runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


#: no trial of this space diverges (sigmoid, momentum < 0.5): every trial completes
CALM = ["model.activation=sigmoid", "optimizer.momentum=interval(0.0, 0.5)"]


@pytest.fixture(scope="session")
def calm_sweep(tmp_path_factory):
    """One three-trial sweep of the CALM space with the default launcher (its report and registered
    winner included), run once per session for the tests that read what a finished sweep left
    (``test_sweep``, ``test_report``, ``test_rerun``; marked ``xdist_group("calm_sweep")`` so one
    pytest-xdist worker runs it once). Read it, never write to it: a test that adds runs or trials
    works on a copy (:func:`copy_stores`). One packed worker (``n_jobs=4``: the default pack of 4
    on a CPU, whatever the cores): its three trials share it. ``git`` on its PATH is a wrapper that logs each call (``git_calls``: "PPID ARGS"
    lines) before running the real one: ``test_provenance`` counts them."""
    folder = tmp_path_factory.mktemp("calm_sweep")
    (folder / "bin").mkdir()
    (folder / "bin" / "git").write_text(f'#!/bin/sh\necho "$PPID $*" >> {folder}/git_calls\n'
                                        f'exec {shutil.which("git")} "$@"\n')
    (folder / "bin" / "git").chmod(0o755)
    proc = run_cli(sweep_args(folder, *CALM, "hydra.sweeper.n_jobs=4", register=True, pruner=None), folder,
                   probe_tensorflow=True,
                   env={"PATH": f"{folder}/bin:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(folder=folder, proc=proc, uri=f"sqlite:///{folder}/mlflow.db",
                           git_calls=folder / "git_calls")


#: in the shared single run's config and Hydra environment: no file, tag or line may show it
SECRET = "s3cret"


@pytest.fixture(scope="session")
def single_run(tmp_path_factory):
    """One tiny CLI run (``optimizer.lr=0.5``, a password in a config value and in the job's
    environment), run once per session for the tests that read what a run left (``test_run``,
    ``test_secrets``, ``test_rerun``; ``xdist_group("single_run")``). A test that adds runs works on a
    copy (:func:`copy_stores`)."""
    folder = tmp_path_factory.mktemp("single_run")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    proc = run_cli([*TINY, f"mlflow.tracking_uri={uri}", "optimizer.lr=0.5",
                    f"+note=postgresql://postgres:{SECRET}@127.0.0.1:5432/db",
                    f"+hydra.job.env_set.LENET_URL=http://u:{SECRET}@h:5000"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(folder=folder, proc=proc, uri=uri)


def copy_stores(shared, folder: Path) -> MlflowClient:
    """A shared sweep's or run's stores (journal, SQLite, sweep folder) copied into ``folder``; a client of
    the copy. Its runs' artifacts stay where the original wrote them (MLflow records absolute
    artifact URIs): new runs of the copy write theirs there too, beside, never over, the original's."""
    for name in ("optuna.journal", "mlflow.db", "multirun"):
        src = shared.folder / name
        if not src.exists():
            continue
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, folder / name)
    return MlflowClient(f"sqlite:///{folder}/mlflow.db")


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
    """SIGTERM to the server's process group, SIGKILL if it has not stopped within 5 s (its graceful
    shutdown is not under test; waiting for it cost seconds per server)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its own worker processes
        try:
            proc.wait(timeout=5)
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


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    """One ``mlflow server`` on a fresh PostgreSQL database, artifacts proxied to ``artifacts/``,
    for the session (a server's start migrates a new schema: seconds). Tests that share it
    (``xdist_group("tracking_server")``) keep their runs apart by experiment."""
    folder = tmp_path_factory.mktemp("tracking_server")
    for url in _fresh_database():
        with mlflow_server_on(url, folder) as server:
            yield SimpleNamespace(url=server, artifacts=folder / "artifacts")


def pytest_collection_modifyitems(items):
    """The tests that start sweeps (marked ``sweep``: tens of seconds each) first, the many quick ones
    after: pytest-xdist hands tests out in this order, so the quick ones fill the workers' ends instead
    of one long test running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("sweep") is None)
