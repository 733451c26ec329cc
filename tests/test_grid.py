"""Grid sweeps: n_trials capped at the grid, the seed trial only as a full grid point, every point run."""

import pytest
from optuna.trial import TrialState

from conftest import all_runs, load, run_cli, sweep_args

pytestmark = pytest.mark.sweep  # every test here runs a sweep (make test-fast skips them)


def test_pure_grid_runs_every_point_once_and_finishes(tmp_path, client):
    # lr 0.9 (the notebook's) is not a point of this grid: no seed trial, said in one line
    proc = run_cli(sweep_args(tmp_path, "hydra/sweeper/sampler=grid", "~hydra.sweeper.params.optimizer.momentum",
                              "~hydra.sweeper.params.optimizer.lr", "optimizer.lr=choice(0.1,0.01)",
                              "optimizer.nesterov=false", "model.activation=relu", "data.normalize=true",
                              n_trials=20), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "n_trials=20 is more than the grid's 2 points: the study ends at 2 trials" in proc.stdout
    assert "grid: no seed trial, the notebook's configuration is not a point of this grid (optimizer.lr)" in proc.stdout
    study = load(tmp_path)
    assert sorted(t.params["optimizer.lr"] for t in study.trials) == [0.01, 0.1]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert (tmp_path / "multirun" / "optimization_results.yaml").is_file()
    runs = all_runs(client)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}  # parent + 2 trials


def test_grid_with_the_notebook_as_a_point_runs_it_once(tmp_path):
    proc = run_cli(sweep_args(tmp_path, "hydra/sweeper/sampler=grid", "~hydra.sweeper.params.optimizer.momentum",
                              "~hydra.sweeper.params.optimizer.nesterov", "optimizer.lr=choice(0.9,0.05)",
                              "model.activation=choice(sigmoid,relu)", n_trials=20), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "grid: the notebook's configuration is one of the grid's points" in proc.stdout
    study = load(tmp_path)
    points = {(t.params["optimizer.lr"], t.params["model.activation"]) for t in study.trials}
    assert len(study.trials) == 4 and len(points) == 4  # each point once, the notebook's included
    assert all(t.state.is_finished() for t in study.trials)
