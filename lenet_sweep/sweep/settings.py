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
