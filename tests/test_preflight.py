"""Bad sweep settings and unreachable stores: one line naming the key or URL, exit != 0, within
seconds, and nothing created (no study, no MLflow database or run)."""

import socket
import subprocess
import sys

import pytest

from conftest import run_cli, sweep_args



def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_error_line(proc, *fragments):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_nothing_created(tmp_path):
    assert not (tmp_path / "optuna.journal").exists() and not (tmp_path / "mlflow.db").exists()


# n_trials=0, n_jobs=0 and -1, n_workers < n_jobs and an unwritable sweep dir are rows of the fault
# suite's 10-bad-inputs, which tests/test_fault_suite.py runs with these same fragments
@pytest.mark.parametrize("override, fragments", [
    ("hydra.sweeper.grace_period=5", ["hydra.sweeper.grace_period=5 is invalid: must be longer"]),
    ("hydra.launcher.pack=0", ["hydra.launcher.pack=0 is invalid: trials per worker must be >= 1"]),
    ("hydra.launcher.batches=same", ["hydra.launcher.batches=same is invalid: independent", "or shared"]),
    ("hydra.sweeper.sampler=grid", ["hydra.sweeper.sampler=grid is now a config group: write "
                                    "hydra/sweeper/sampler=grid"]),
    ("hydra.sweeper.pruner.name=none", ["write hydra/sweeper/pruner=none"]),
    ("hydra/sweeper/pruner=threshold", ["hydra/sweeper/pruner=threshold: Either lower or upper"]),
    ("objective=val_loss hydra.sweeper.direction=maximize",
     ["hydra.sweeper.direction=maximize contradicts objective=val_loss, which is a loss"]),
])
@pytest.mark.sweep
def test_bad_sweep_settings_fail_before_anything_is_created(tmp_path, override, fragments):
    proc = run_cli(sweep_args(tmp_path, *override.split()), tmp_path, timeout=120)
    assert_one_error_line(proc, *fragments)
    assert_nothing_created(tmp_path)


@pytest.mark.sweep
@pytest.mark.postgres
def test_unreachable_or_missing_postgresql_storage(tmp_path, pg_url):
    port = closed_port()
    nobody = f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/db"
    proc = run_cli(sweep_args(tmp_path, f"hydra.sweeper.storage={nobody}"), tmp_path, timeout=120)
    assert_one_error_line(proc, f"hydra.sweeper.storage=postgresql+psycopg://postgres:***@127.0.0.1:{port}/db",
                          "cannot connect")
    assert "secret" not in proc.stderr + proc.stdout
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    proc = run_cli(sweep_args(tmp_path, f"hydra.sweeper.storage={missing}"), tmp_path, timeout=120)
    assert_one_error_line(proc, "no_such_database", "does not exist")
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.sweep
def test_unreachable_mlflow_server(tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    proc = run_cli(sweep_args(tmp_path, f"mlflow.tracking_uri={uri}"), tmp_path, timeout=120)
    assert_one_error_line(proc, f"mlflow.tracking_uri={uri}: no MLflow server answers")
    assert not (tmp_path / "optuna.journal").exists()  # checked before the study is created
    single = run_cli(["trainer.epochs=1", "data.train_limit=512", f"mlflow.tracking_uri={uri}"], tmp_path,
                     timeout=120)
    assert_one_error_line(single, "no MLflow server answers")


def test_report_with_an_unreachable_storage(tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/x"
    proc = subprocess.run([sys.executable, "-m", "lenet_sweep.report", f"storage={url}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert_one_error_line(proc, url, "cannot connect")


@pytest.mark.sweep
def test_a_study_is_resumed_only_in_its_own_direction(tmp_path):
    import optuna

    optuna.create_study(study_name="lenet_sweep", direction="maximize",
                        storage=optuna.storages.JournalStorage(
                            optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))))
    proc = run_cli(sweep_args(tmp_path, "objective=val_loss"), tmp_path, timeout=120)
    assert_one_error_line(proc, "study lenet_sweep in", "was created to maximize, not to minimize")
