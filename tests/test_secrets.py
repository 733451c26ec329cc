"""A password in a storage or tracking URL never shows: not in MLflow params, tags or artifacts,
not in Hydra's saved files, not in the printed output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import SECRET, TINY, all_runs, run_cli
from lenet_sweep import tracking
from lenet_sweep.redaction import redact



@pytest.mark.parametrize("text, expected", [
    ("postgresql://postgres:s3cret@127.0.0.1:5432/db", "postgresql://postgres:***@127.0.0.1:5432/db"),
    ("postgresql+psycopg://u:p%40ss%2Fw@host/db", "postgresql+psycopg://u:***@host/db"),
    ("http://u:unencoded@and/slash@h:5000/x", "http://u:***@h:5000/x"),  # mask more, never less
    ("http://:only-password@h", "http://:***@h"),
    ("http://user@h:5000", "http://user@h:5000"),  # user only: nothing to hide
    ("http://h:5000/path", "http://h:5000/path"),  # a port is not a password
    ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
    ("a=http://u:p1@h1:5000 b=postgresql://v:p2@h2/db, 'mysql://w:p3@h3'",
     "a=http://u:***@h1:5000 b=postgresql://v:***@h2/db, 'mysql://w:***@h3'"),
    ("storage: postgresql://u:pw@h/db\ntracking_uri: ${oc.env:LENET_TRACKING}\n",
     "storage: postgresql://u:***@h/db\ntracking_uri: ${oc.env:LENET_TRACKING}\n"),
    ("lr 0.1 at 12:30@home, user:pw@example.com, no scheme", "lr 0.1 at 12:30@home, user:pw@example.com, no scheme"),
    ("", ""),
])
def test_redact(text, expected):
    assert redact(text) == expected
    assert tracking.redact is redact


@pytest.mark.parametrize("url, expected", [
    ("postgresql://postgres:s3cret@127.0.0.1:5432/db", "postgresql://postgres:***@127.0.0.1:5432/db"),
    ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
    ("http://user@h:5000", "http://user@h:5000"),
    ("http://h:5000", "http://h:5000"),
    (None, None),
])
def test_mask_url(url, expected):
    assert tracking.mask_url(url) == expected


def grep_tree(root: Path, needle: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle`` (SQLite stores, YAML, logs, CSV...)."""
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def assert_run_clean(client: MlflowClient, run, tmp_path: Path) -> None:
    for key, value in {**run.data.params, **run.data.tags}.items():
        assert SECRET not in value, (run.info.run_name, key, value)
    target = tmp_path / "downloads" / run.info.run_id
    target.mkdir(parents=True)
    client.download_artifacts(run.info.run_id, "", str(target))
    assert grep_tree(target, SECRET) == []


@pytest.mark.xdist_group("single_run")
def test_single_run_hides_passwords_everywhere(single_run, tmp_path):
    # the shared run has SECRET in +note and in +hydra.job.env_set.LENET_URL (conftest)
    proc, client = single_run.proc, MlflowClient(single_run.uri)
    assert SECRET not in proc.stdout + proc.stderr
    [run] = all_runs(client)
    assert run.data.params["note"] == "postgresql://postgres:***@127.0.0.1:5432/db"
    assert "+note=postgresql://postgres:***@" in run.data.tags["hydra.overrides"]
    assert_run_clean(client, run, tmp_path)
    assert {".hydra", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    saved = single_run.folder / "out" / ".hydra"
    assert "+note=postgresql://postgres:***@" in (saved / "overrides.yaml").read_text()
    assert "http://u:***@h:5000" in (saved / "hydra.yaml").read_text()
    # .hydra/*.yaml, the job's log, the SQLite store, mlruns/ (and the artifacts downloaded here)
    assert grep_tree(single_run.folder, SECRET) == [] and grep_tree(tmp_path, SECRET) == []


@pytest.mark.sweep
@pytest.mark.postgres
def test_sweep_with_a_password_in_the_storage_url_shows_it_nowhere(tmp_path, client, mlflow_uri,
                                                                   pg_url, monkeypatch):
    storage = pg_url.replace("postgres@", f"postgres:{SECRET}@")  # trust auth ignores the password
    sweep_dir = tmp_path / "multirun"
    proc = run_cli(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                    *TINY, f"mlflow.tracking_uri={mlflow_uri}", f"hydra.sweeper.storage={storage}",
                    "hydra.sweeper.study_name=secret", f"hydra.sweep.dir={sweep_dir}",
                    f"+note=http://u:{SECRET}@h:5000"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    runs = all_runs(client)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert parent.data.tags["optuna.storage"] == pg_url.replace("postgres@", "postgres:***@")
    for run in runs:
        assert_run_clean(client, run, tmp_path)
    trial_hydra = sweep_dir / "0" / ".hydra"
    assert "hydra.sweeper.storage=postgresql+psycopg://postgres:***@" in (
        trial_hydra / "overrides.yaml").read_text() + (trial_hydra / "hydra.yaml").read_text()
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert "***" in results["storage"]
    assert grep_tree(tmp_path, SECRET) == []


@pytest.mark.sweep
@pytest.mark.postgres
def test_env_interpolated_storage_and_tracking_uri_stay_unresolved(tmp_path, client, mlflow_uri,
                                                                   pg_url):
    """The documented way: the URLs come from the environment; saved files keep ``${oc.env:...}``."""
    storage = pg_url.replace("postgres@", f"postgres:{SECRET}@")
    sweep_dir = tmp_path / "multirun"
    proc = run_cli(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1",
                    *TINY, "mlflow.tracking_uri=${oc.env:LENET_TRACKING}",
                    "hydra.sweeper.storage=${oc.env:LENET_STORAGE}", "hydra.sweeper.study_name=env",
                    f"hydra.sweep.dir={sweep_dir}"], tmp_path,
                   env={"LENET_STORAGE": storage, "LENET_TRACKING": mlflow_uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    [parent] = [r for r in all_runs(client) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["optuna.storage"] == pg_url.replace("postgres@", "postgres:***@")
    import optuna
    storage_ = optuna.storages.RDBStorage(pg_url)
    try:
        assert len(optuna.load_study(study_name="env", storage=storage_).trials) == 1
    finally:
        storage_.engine.dispose()
    saved = (sweep_dir / "0" / ".hydra" / "hydra.yaml").read_text()
    assert "storage: ${oc.env:LENET_STORAGE}" in saved
    assert "mlflow.tracking_uri=${oc.env:LENET_TRACKING}" in (
        sweep_dir / "0" / ".hydra" / "overrides.yaml").read_text()
    assert grep_tree(tmp_path, SECRET) == []
