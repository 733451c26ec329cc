"""What a sweep worker's trials share is looked up once per worker: git runs once for every trial of it."""

import os
import shutil

import pytest

from conftest import CALM, parents_and_children, run_cli, sweep_args
from lenet_sweep.provenance import CHECKOUT

SHARED = ("mlflow.source.git.commit", "git.dirty", "host.cpu", "host.cpus", "version.lenet_sweep",
          "version.tensorflow", "version.mlflow", "version.python")


@pytest.mark.sweep
def test_two_trials_of_one_worker_record_the_same_provenance_and_git_runs_once(tmp_path, client):
    calls, real_git = tmp_path / "git_calls", shutil.which("git")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f'#!/bin/sh\necho "$PPID $*" >> {calls}\nexec {real_git} "$@"\n')
    (bin_dir / "git").chmod(0o755)
    proc = run_cli(sweep_args(tmp_path, *CALM, "hydra.sweeper.n_jobs=1", n_trials=2), tmp_path,
                   env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    children = parents_and_children(client)[1]
    assert len(children) == 2
    tags = [{k: c.data.tags.get(k) for k in SHARED} for c in children]
    assert tags[0] == tags[1] and len(tags[0]["mlflow.source.git.commit"]) == 40
    digests = [sorted(i.dataset.digest for i in c.inputs.dataset_inputs) for c in children]
    assert digests[0] == digests[1] and len(digests[0]) == 3
    # one lookup of the checkout (top level, commit, status) by the one worker that ran both trials
    # (MLflow's own git calls when it logs the winner's model, through GitPython, do not pass -C)
    lines = [line for line in calls.read_text().splitlines() if " -C " in line]
    assert [line.split(" ", 1)[1] for line in lines] == [
        f"-C {CHECKOUT} {args}" for args in ("rev-parse --show-toplevel", "rev-parse HEAD",
                               "status --porcelain --untracked-files=no")]
    assert len({line.split(" ", 1)[0] for line in lines}) == 1
