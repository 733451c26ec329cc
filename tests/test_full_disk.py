"""A full disk is one line: ``error: cannot write PATH: No space left on device``, no traceback, no run
left RUNNING, the study still readable. The disk is a real 64 KiB tmpfs (root mounts it; where
mounting is not allowed the tests skip, saying why)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import CALM, TINY, all_runs, load, run_cli, sweep_args
from lenet_sweep.stores import open_optuna_storage

NOSPACE = "No space left on device"


@pytest.fixture
def small_disk():
    """``mount(folder)``: a real 64 KiB tmpfs at ``folder`` (created), unmounted after the test."""
    mounted: list[Path] = []

    def mount(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if shutil.which("mount") is None:
            pytest.skip("no mount command: cannot make a small filesystem to fill")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a 64 KiB tmpfs (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(folder)], check=True)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The process failed with exactly one ``error:`` line on stderr and no traceback anywhere."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_single_run_on_a_full_artifact_disk(tmp_path, small_disk):
    artifacts = small_disk(tmp_path / "mlruns")  # a SQLite store keeps artifacts in mlruns/ beside it
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli([*TINY, f"mlflow.tracking_uri={uri}"], tmp_path)
    line = one_error_line(proc)
    assert line.startswith(f"error: cannot write {artifacts}/") and line.endswith(f": {NOSPACE}"), line
    [run] = all_runs(MlflowClient(uri))
    assert run.info.status == "FAILED"
    assert NOSPACE in run.data.tags["error"] and str(artifacts) in run.data.tags["error"]


@pytest.mark.sweep
def test_sweep_on_a_full_artifact_disk(tmp_path, small_disk):
    artifacts = small_disk(tmp_path / "mlruns")
    proc = run_cli(sweep_args(tmp_path, *CALM, "hydra.sweeper.max_failure_rate=1", n_trials=1), tmp_path)
    # the trial fails on its weights; the sweep then on its results table, as the parent's artifact
    line = one_error_line(proc)
    assert line.startswith(f"error: cannot write {artifacts}/") and line.endswith(f"/trials.csv: {NOSPACE}"), line
    [trial] = load(tmp_path).trials  # the study is readable
    assert trial.state == TrialState.FAIL
    assert NOSPACE in trial.user_attrs["fail_reason"] and str(artifacts) in trial.user_attrs["fail_reason"]
    runs = all_runs(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"))
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED"]  # the parent and the trial's run


@pytest.mark.sweep
def test_sweep_whose_journal_fills_its_disk(tmp_path, small_disk):
    """The journal gets one free page: a trial or two in, an append fails (a torn last line). One line;
    with space again the study loads, the torn line cut."""
    disk = small_disk(tmp_path / "journal")
    (disk / "filler").write_bytes(b"\0" * 60 * 1024)
    journal = disk / "optuna.journal"
    proc = run_cli(sweep_args(tmp_path, *CALM, f"hydra.sweeper.storage={journal}", "hydra.sweeper.n_jobs=1",
                              "hydra.sweeper.max_failure_rate=1", n_trials=2), tmp_path)
    assert one_error_line(proc) == f"error: cannot write {journal}: {NOSPACE}"
    assert journal.stat().st_size == 4096  # it filled the disk: the failure above is its own
    runs = all_runs(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"))
    assert [r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags] == ["FAILED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the trial's run too
    (disk / "filler").unlink()  # space again: the study loads, its torn last line cut
    study = optuna.load_study(study_name="lenet_sweep", storage=open_optuna_storage(str(journal)))
    assert study.trials and journal.read_bytes().endswith(b"\n")
