"""What a sweep worker's trials share is looked up once per worker: git runs once for every trial of it."""

import pytest
from mlflow.tracking import MlflowClient

from conftest import parents_and_children
from lenet_sweep.provenance import CHECKOUT

SHARED = ("mlflow.source.git.commit", "git.dirty", "host.cpu", "host.cpus", "version.lenet_sweep",
          "version.tensorflow", "version.mlflow", "version.python")


@pytest.mark.xdist_group("calm_sweep")
def test_the_trials_of_one_worker_record_the_same_provenance_and_git_runs_once(calm_sweep):
    children = parents_and_children(MlflowClient(calm_sweep.uri))[1]
    assert len(children) == 3  # the shared sweep: three trials, one worker
    tags = [{k: c.data.tags.get(k) for k in SHARED} for c in children]
    assert tags[0] == tags[1] == tags[2] and len(tags[0]["mlflow.source.git.commit"]) == 40
    digests = [sorted(i.dataset.digest for i in c.inputs.dataset_inputs) for c in children]
    assert digests[0] == digests[1] == digests[2] and len(digests[0]) == 3
    # one lookup of the checkout (top level, commit, status) by the one worker that ran the three
    # trials (MLflow's own git calls, through GitPython when it resolves a run's context, pass no -C)
    lines = [line for line in calm_sweep.git_calls.read_text().splitlines() if " -C " in line]
    assert [line.split(" ", 1)[1] for line in lines] == [
        f"-C {CHECKOUT} {args}" for args in ("rev-parse --show-toplevel", "rev-parse HEAD",
                                             "status --porcelain --untracked-files=no")]
    assert len({line.split(" ", 1)[0] for line in lines}) == 1
