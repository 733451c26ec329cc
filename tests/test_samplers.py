"""Per-trial sampler seeds: sweepers sharing a study, or resuming it, never replay each other's draws;
a single sweeper on a fresh study repeats itself."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hydra.utils import instantiate
from omegaconf import OmegaConf

from lenet_sweep.sweep.samplers import make_sampler
from lenet_sweep.sweep.settings import SAMPLERS
from lenet_sweep.stores import open_optuna_storage

SPACE = {"optimizer.lr": FloatDistribution(0.001, 1.0, log=True),
         "optimizer.momentum": FloatDistribution(0.0, 0.99),
         "model.activation": CategoricalDistribution(["sigmoid", "relu"])}


def sweeper(path, name="shared", sampler="tpe", seed=42):
    """What each sweeper process does: its own sampler (built from hydra/sweeper/sampler=<sampler>,
    as Hydra instantiates it) from the same configured seed."""
    make = instantiate(OmegaConf.structured(SAMPLERS[sampler]))
    return optuna.create_study(study_name=name, storage=open_optuna_storage(str(path)), load_if_exists=True,
                               sampler=make_sampler(sampler, make, seed, SPACE), direction="maximize")


def params_key(trial):
    return tuple(sorted(trial.params.items()))


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes"])
def test_three_sweepers_and_a_resume_draw_distinct_settings(tmp_path, sampler):
    journal = tmp_path / "optuna.journal"
    workers = [sweeper(journal, sampler=sampler) for _ in range(3)]
    for round_ in range(3):  # interleaved asks, as concurrent sweepers do; some tells in between
        asked = [(w, w.ask(SPACE)) for w in workers]
        for w, trial in asked:
            w.tell(trial, trial.params["optimizer.lr"] * (round_ + 1))
    resumed = sweeper(journal, sampler=sampler)  # a later invocation, same seed
    for _ in range(3):
        trial = resumed.ask(SPACE)
        resumed.tell(trial, 0.5)
    trials = resumed.get_trials()
    assert len(trials) == 12
    assert len({params_key(t) for t in trials}) == 12


def test_a_single_sweeper_on_a_fresh_study_repeats_itself(tmp_path):
    runs = []
    for name in ("a", "b"):
        study = sweeper(tmp_path / f"{name}.journal", name=name, seed=7)
        for _ in range(4):
            trial = study.ask(SPACE)
            study.tell(trial, trial.params["optimizer.momentum"])
        runs.append([params_key(t) for t in study.trials])
    assert runs[0] == runs[1]
    other = sweeper(tmp_path / "c.journal", name="c", seed=8).ask(SPACE)
    assert params_key(other) != runs[0][0]  # another seed, other draws
