"""``hydra.sweeper.custom_search_space``: a Python function ``(cfg, trial)`` suggests parameters after
the config's space, as in Hydra's official Optuna sweeper: conditional ones, and the optimizer group
itself. Real sweeps (subprocesses), the suggestions read back from the study's storage."""

import pytest
from optuna.trial import TrialState

from conftest import TINY, load, parents_and_children, run_cli, sweep_args

SPACE_MODULE = '''
def optimizer_keys(cfg, trial):
    """Each optimizer's own keys, only where they apply."""
    if trial.params["optimizer"] == "sgd":
        trial.suggest_float("optimizer.momentum", 0.0, 0.9)
    else:
        trial.suggest_float("optimizer.beta_1", 0.8, 0.95)


def broken(cfg, trial):
    raise KeyError("no such parameter")
'''

#: the optimizer group searched; SGD's entries of the shipped space dropped (Adam has no momentum)
GROUP_SPACE = ["optimizer=choice(sgd,adam)", "optimizer.lr=tag(log, interval(0.001, 0.05))",  # no divergence
               "~hydra.sweeper.params.optimizer.momentum",
               "~hydra.sweeper.params.optimizer.nesterov", "hydra/sweeper/sampler=random"]


@pytest.fixture
def space_module(tmp_path):
    (tmp_path / "my_space.py").write_text(SPACE_MODULE)
    return {"PYTHONPATH": str(tmp_path)}


@pytest.mark.sweep
def test_a_conditional_parameter_is_suggested_only_where_its_condition_holds(tmp_path, client, space_module):
    proc = run_cli(sweep_args(tmp_path, *GROUP_SPACE, "hydra.sweeper.custom_search_space=my_space.optimizer_keys",
                              "hydra.sweeper.enqueue_seed_trial=false", "hydra.sweeper.seed=0", n_trials=4),
                   tmp_path, env=space_module)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load(tmp_path).trials
    assert all(t.state == TrialState.COMPLETE for t in trials) and len(trials) == 4
    # seed 0 draws sgd, adam, sgd, adam (numpy's seeded generator: the same on every machine)
    assert {t.params["optimizer"] for t in trials} == {"sgd", "adam"}
    for trial in trials:
        own = "optimizer.momentum" if trial.params["optimizer"] == "sgd" else "optimizer.beta_1"
        other = "optimizer.beta_1" if own == "optimizer.momentum" else "optimizer.momentum"
        assert own in trial.params and other not in trial.params
    # each trial trained what it was given: its run's params
    runs = {int(c.data.tags["optuna.trial_number"]): c for c in parents_and_children(client)[1]}
    for trial in trials:
        params = runs[trial.number].data.params
        assert params["optimizer.name"] == trial.params["optimizer"]
        own = "optimizer.momentum" if trial.params["optimizer"] == "sgd" else "optimizer.beta_1"
        assert float(params[own]) == pytest.approx(trial.params[own])


@pytest.mark.sweep
@pytest.mark.parametrize("name, fragment", [
    ("my_space.nothing_here", "hydra.sweeper.custom_search_space=my_space.nothing_here: "),
    ("my_space.broken", "hydra.sweeper.custom_search_space=my_space.broken failed on trial 0: KeyError: "),
])
def test_a_custom_search_space_that_fails_is_one_line_naming_it(tmp_path, space_module, name, fragment):
    proc = run_cli(sweep_args(tmp_path, *TINY, *GROUP_SPACE, f"hydra.sweeper.custom_search_space={name}",
                              n_trials=1), tmp_path, env=space_module)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
