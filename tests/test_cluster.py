"""Clusters through hydra-submitit-launcher: our sweeper launches batches of n_jobs trials as jobs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import TINY, all_runs, run_cli
from lenet_sweep import PROJECT_ROOT

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")


def test_slurm_launcher_composes_with_our_sweeper():
    proc = subprocess.run(
        [sys.executable, "-m", "lenet_sweep", "hydra/sweeper=optuna", "hydra/launcher=submitit_slurm",
         "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=60",
         "--cfg", "hydra"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hydra = yaml.safe_load(proc.stdout)["hydra"]
    assert hydra["launcher"]["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert hydra["launcher"]["partition"] == "gpu" and hydra["launcher"]["gpus_per_node"] == 1
    assert hydra["sweeper"]["_target_"] == "hydra_plugins.lenet_sweep_optuna.optuna_sweeper.OptunaSweeper"
    assert hydra["runtime"]["choices"]["hydra/launcher"] == "submitit_slurm"


@pytest.mark.sweep
def test_sweep_through_submitit_local_runs_a_batch_and_logs_no_password(tmp_path, client, mlflow_uri):
    """submitit's local executor stands in for Slurm: same launcher code, jobs as local processes."""
    sweep_dir = tmp_path / "multirun"
    proc = run_cli(["-m", "hydra/sweeper=optuna", "hydra/launcher=submitit_local",
                    "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", *TINY,
                    f"mlflow.tracking_uri={mlflow_uri}", f"hydra.sweeper.storage={tmp_path}/optuna.journal",
                    f"hydra.sweep.dir={sweep_dir}", "+note=http://u:s3cret@h:5000"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in proc.stdout  # the launcher logs each job's overrides
    assert "+note=http://u:***@h:5000" in proc.stdout and "s3cret" not in proc.stdout + proc.stderr
    runs = all_runs(client)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    # submitit pickles each job (its overrides included) under .submitit/: not text, not redactable
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".pkl"
              and b"s3cret" in p.read_bytes()]
    assert leaked == []
