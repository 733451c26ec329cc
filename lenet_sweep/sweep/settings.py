"""``hydra.sweeper.*`` for ``hydra/sweeper=optuna``: the schema (types checked at compose time).

The values users see and change live in ``conf/hydra/sweeper/optuna.yaml``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from lenet_sweep.config import objective_text

SWEEPER_TARGET = "hydra_plugins.lenet_sweep_optuna.optuna_sweeper.OptunaSweeper"


# -- samplers: hydra/sweeper/sampler=<name>, every constructor option typed --------------------------
# ``_partial_``: Hydra hands the sweeper a constructor, which it calls with each trial's seed
# (lenet_sweep.sweep.samplers) and, for the grid, the search space.
@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    _partial_: bool = True
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: Optional[bool] = None  # null: Optuna's default
    group: bool = False
    constant_liar: bool = True  # running trials count as bad: parallel asks spread out


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    _partial_: bool = True


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    _partial_: bool = True
    n_startup_trials: int = 1
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    popsize: Optional[int] = None
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    _partial_: bool = True
    qmc_type: str = "sobol"
    scramble: bool = False
    warn_asynchronous_seeding: bool = False  # each sweeper seeds it the same on purpose (samplers.py)
    warn_independent_sampling: bool = True


@dataclass
class GPSamplerConf:
    _target_: str = "optuna.samplers.GPSampler"  # needs PyTorch
    _partial_: bool = True
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    warn_independent_sampling: bool = True


@dataclass
class GridSamplerConf:
    _target_: str = "lenet_sweep.sweep.samplers.GridSampler"  # every search-space entry a choice
    _partial_: bool = True


SAMPLERS = {"tpe": TPESamplerConf, "random": RandomSamplerConf, "cmaes": CmaEsSamplerConf,
            "qmc": QMCSamplerConf, "gp": GPSamplerConf, "grid": GridSamplerConf}


# -- pruners: hydra/sweeper/pruner=<name>; a trial reports one value per epoch, at step = the epoch's
# number (from 1, as Keras prints it). Optuna prunes at a step >= n_warmup_steps: n_warmup_steps is the
# first epoch at which a trial may be pruned; a rung of SuccessiveHalving/Hyperband is judged at step
# min_resource * reduction_factor**k (k = 0, 1, ...).
@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    _partial_: bool = True
    n_startup_trials: int = 5  # trials that finish before any is pruned
    n_warmup_steps: int = 2  # the first epoch a trial may be pruned at (it trains one unjudged)
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    _target_: str = "optuna.pruners.PercentilePruner"
    _partial_: bool = True
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 2
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    _partial_: bool = True
    min_resource: int = 2  # the epoch of the first rung (no trial is pruned before it)
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    _partial_: bool = True
    min_resource: Any = 2  # the epoch of the first rung
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConf:
    _target_: str = "optuna.pruners.ThresholdPruner"
    _partial_: bool = True
    lower: Optional[float] = None  # prune when the epoch's value is below this
    upper: Optional[float] = None  # prune when the epoch's value is above this
    n_warmup_steps: int = 1  # from the first epoch on
    interval_steps: int = 1


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"
    _partial_: bool = True


PRUNERS = {"median": MedianPrunerConf, "percentile": PercentilePrunerConf,
           "hyperband": HyperbandPrunerConf, "successive_halving": SuccessiveHalvingPrunerConf,
           "threshold": ThresholdPrunerConf, "none": NopPrunerConf}


@dataclass
class OptunaSweeperConf:
    _target_: str = SWEEPER_TARGET
    sampler: Any = MISSING  # hydra/sweeper/sampler=<name>; a constructor (Hydra's _partial_)
    seed: Optional[int] = 42  # the sampler's seed; each trial's draws: (seed, trial number)
    # maximize or minimize; null: by the objective's name (a *_loss, train_seconds, num_params is
    # minimised, an accuracy maximised); several objectives: a list as long as theirs (null entries too)
    direction: Any = None
    n_trials: int = 20  # total finished trials of the study (a resumed sweep counts earlier ones)
    n_jobs: Optional[int] = None  # trials at once; null: one per GPU, else one per 2 CPU cores
    timeout: Optional[float] = None  # seconds after which no new trial starts
    storage: Optional[str] = None  # null: <project>/multirun/optuna.journal; or an RDB URL
    study_name: str = "lenet_sweep"
    max_failure_rate: float = 0.5  # stop once more than this fraction of n_trials has failed
    enqueue_seed_trial: bool = True  # the study's first trial is the notebook's configuration
    heartbeat_interval: Optional[int] = 10  # RDB storages: seconds between a running trial's beats
    grace_period: Optional[int] = None  # RDB: seconds without a beat before a trial is failed (2x)
    retry_failed: int = 0  # re-queue a trial whose sweeper or worker died, at most this many times
    stall_factor: float = 10.0  # a running trial silent this many median epochs is said to be stalled
    stall_floor: float = 60.0  # ... and for at least this many seconds (nothing is killed)
    # module.function(cfg, trial) called after the space's entries are suggested, to suggest more
    # (conditional ones: trial.suggest_float("optimizer.beta_1", ...) when trial.params["optimizer"] ==
    # "adam"), as in Hydra's official Optuna sweeper; keys are override keys
    custom_search_space: Optional[str] = None
    register_winner: bool = True  # register the best trial's model (mlflow.registered_model), gate @champion
    pruner: Any = MISSING  # hydra/sweeper/pruner=<name>
    params: Dict[str, Any] = field(default_factory=dict)  # the search space, Hydra's grammar


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="optuna_schema", node=OptunaSweeperConf, provider="lenet_sweep")
    for name, node in SAMPLERS.items():
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="lenet_sweep")
    for name, node in PRUNERS.items():
        cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="lenet_sweep")


def defaults() -> dict[str, Any]:
    """The schema's plain defaults (``OptunaSweeperConf``), by key."""
    return {f.name: f.default for f in dataclasses.fields(OptunaSweeperConf)
            if f.default is not dataclasses.MISSING and f.default is not MISSING}


def check(s: dict) -> None:
    """Sizes and times the schema's types cannot rule out; a ValueError names the key."""
    def bad(key: str, rule: str, example: str) -> None:
        raise ValueError(f"hydra.sweeper.{key}={s[key]} is invalid: {rule} "
                         f"(for example hydra.sweeper.{key}={example})")

    if s["n_trials"] < 1:
        bad("n_trials", "must be >= 1", "20")
    if s["n_jobs"] is not None and s["n_jobs"] < 1:
        bad("n_jobs", "must be >= 1, or null for one per GPU / per two CPU cores", "2")
    if s["timeout"] is not None and s["timeout"] <= 0:
        bad("timeout", "must be > 0 seconds, or null", "3600")
    if not 0 <= s["max_failure_rate"] <= 1:
        bad("max_failure_rate", "must be in [0, 1]", "0.5")
    if s["heartbeat_interval"] is not None and s["heartbeat_interval"] < 1:
        bad("heartbeat_interval", "must be >= 1 second, or null (no heartbeat)", "10")
    if s["grace_period"] is not None and s["grace_period"] <= (s["heartbeat_interval"] or 0):
        bad("grace_period", "must be longer than hydra.sweeper.heartbeat_interval", "60")
    if s["retry_failed"] < 0:
        bad("retry_failed", "must be >= 0", "1")
    if s["stall_factor"] <= 1:
        bad("stall_factor", "must be > 1 (epochs of silence)", "10")
    if s["stall_floor"] <= 0:
        bad("stall_floor", "must be > 0 seconds", "60")


def custom_search_space(path: str | None):
    """The function ``hydra.sweeper.custom_search_space`` names, or None; a ValueError naming it."""
    if path is None:
        return None
    from hydra.utils import get_method

    try:
        return get_method(path)
    except Exception as exc:  # Hydra's own message says what it could not import
        reason = " ".join(str(exc).split())
        raise ValueError(f"hydra.sweeper.custom_search_space={path}: {reason}; name a function "
                         f"module.function(cfg, trial) importable here") from None


#: objectives minimised (the others, accuracies, are maximised)
MINIMIZED = ("loss", "val_loss", "test_loss", "train_seconds", "num_params")


def directions(configured: Any, objectives: list[str]) -> list[str]:
    """The study's directions, one per objective: as configured, or by the objective's name. A list
    of another length, a value other than maximize / minimize / null, or a direction that contradicts
    its objective's kind is a ValueError naming the key."""
    shown = objective_text(objectives)
    if isinstance(configured, Sequence) and not isinstance(configured, str):
        given = list(configured)
        text = f"[{','.join('null' if d is None else str(d) for d in given)}]"
    else:
        given, text = [configured] * (len(objectives) if configured is None else 1), configured
    if len(given) != len(objectives):
        raise ValueError(f"hydra.sweeper.direction={text} does not match objective={shown}: give one "
                         f"direction per objective, a list of {len(objectives)} (maximize, minimize or null: "
                         f"null follows the objective), or leave hydra.sweeper.direction null")
    implied_all = ["minimize" if name in MINIMIZED else "maximize" for name in objectives]
    example = f"[{','.join(implied_all)}]" if len(objectives) > 1 else implied_all[0]
    for wanted, name, implied in zip(given, objectives, implied_all):
        if wanted not in (None, "maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={text} is invalid: {wanted} is not maximize, "
                             f"minimize or null (for example hydra.sweeper.direction={example})")
        if wanted is not None and wanted != implied:
            kind = {"train_seconds": "a time", "num_params": "a size"}.get(
                name, "a loss" if implied == "minimize" else "an accuracy")
            which = "which" if len(objectives) == 1 else f"whose {name}"
            raise ValueError(f"hydra.sweeper.direction={text} contradicts objective={shown}, {which} is "
                             f"{kind}: leave its direction null (it follows the objective) or set it to {implied}")
    return implied_all
