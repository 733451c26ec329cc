"""``hydra.sweeper.*`` for ``hydra/sweeper=optuna``: the schema (types checked at compose time).

The values users see and change live in ``conf/hydra/sweeper/optuna.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore

SWEEPER_TARGET = "hydra_plugins.lenet_sweep_optuna.optuna_sweeper.OptunaSweeper"


class Direction(Enum):
    maximize = "maximize"
    minimize = "minimize"


class Sampler(Enum):
    tpe = "tpe"
    random = "random"
    cmaes = "cmaes"
    gp = "gp"
    qmc = "qmc"
    grid = "grid"


class PrunerName(Enum):
    median = "median"
    hyperband = "hyperband"
    successive_halving = "successive_halving"
    threshold = "threshold"
    none = "none"


@dataclass
class PrunerConf:
    name: PrunerName = PrunerName.median
    n_startup_trials: int = 5  # median: trials that finish before any is pruned
    n_warmup_steps: int = 1  # median: epochs a trial runs before it can be pruned
    min_resource: int = 1  # hyperband / successive_halving: epochs before the first rung
    reduction_factor: int = 3  # hyperband / successive_halving
    lower: Optional[float] = None  # threshold: prune when the epoch's value is below this
    upper: Optional[float] = None  # threshold: prune when the epoch's value is above this


@dataclass
class OptunaSweeperConf:
    _target_: str = SWEEPER_TARGET
    sampler: Sampler = Sampler.tpe
    seed: Optional[int] = 42  # the sampler's seed
    direction: Direction = Direction.maximize
    n_trials: int = 20  # total finished trials of the study (a resumed sweep counts earlier ones)
    n_jobs: Optional[int] = None  # trials at once; null: one per GPU, else one per 2 CPU cores
    timeout: Optional[float] = None  # seconds after which no new trial starts
    storage: Optional[str] = None  # null: <project>/multirun/optuna.journal; or an RDB URL
    study_name: str = "lenet_sweep"
    max_failure_rate: float = 0.5  # stop once more than this fraction of n_trials has failed
    enqueue_seed_trial: bool = True  # the study's first trial is the notebook's configuration
    heartbeat_interval: Optional[int] = 10  # RDB storages: seconds between a running trial's beats
    grace_period: Optional[int] = None  # RDB: seconds without a beat before a trial is failed (2x)
    retry_failed: int = 0  # re-queue a trial whose sweeper died, at most this many times
    pruner: PrunerConf = field(default_factory=PrunerConf)
    params: Dict[str, Any] = field(default_factory=dict)  # the search space, Hydra's grammar


def register() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="optuna_schema", node=OptunaSweeperConf,
                                 provider="lenet_sweep")
