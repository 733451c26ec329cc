"""``hydra/launcher=lenet_pool``: long-lived, device-pinned worker processes (lenet_sweep.sweep.pool).

``launch`` runs a batch (Hydra's Launcher API); ``submit`` runs one job and returns a future, which the
lenet_sweep Optuna sweeper uses to start a trial as soon as any worker is free.
"""

import os
from dataclasses import dataclass
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class PoolLauncherConf:
    _target_: str = "hydra_plugins.lenet_sweep_optuna.pool_launcher.PoolLauncher"
    n_workers: Optional[int] = None  # null: the sweeper's n_jobs
    asynchronous: bool = True  # false: the sweeper launches batches and waits for each (a baseline)
    # trials per worker trained as one fused graph (lenet_sweep.model.packed); null (the default): chosen from
    # the devices (lenet_sweep.devices.default_pack) wherever the search space can be packed; 1: unpacked
    pack: Optional[int] = None
    # packed trials' batch orders: independent (each trial its own, from its seed, as it would alone) or
    # shared (one stream per pack from hydra.sweeper.seed: the batch is gathered once and the first
    # convolution runs once for all slots; each trial records its trainer.stream_seed/stream_position)
    batches: str = "independent"


ConfigStore.instance().store(group="hydra/launcher", name="lenet_pool", node=PoolLauncherConf,
                             provider="lenet_sweep")


class PoolLauncher(Launcher):
    def __init__(self, n_workers: Optional[int] = None, asynchronous: bool = True,
                 pack: Optional[int] = None, batches: str = "independent") -> None:
        self.n_workers, self.asynchronous, self.pack, self.batches = n_workers, asynchronous, pack, batches
        self.pool = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def start(self, n_jobs: int, pack: int = 1):
        """The pool for ``n_jobs`` trials at once: ``n_jobs`` workers, or with ``pack`` K (what the
        sweeper's plan resolved ``hydra.launcher.pack`` to), n_jobs / K workers of K slots
        (``n_workers`` when set)."""
        if self.pool is None:
            if pack > 1:
                from lenet_sweep.pack.pool import PackPool

                self.pool = PackPool(self.n_workers or -(-n_jobs // pack), pack)
            else:
                from lenet_sweep.sweep.pool import WorkerPool

                self.pool = WorkerPool(self.n_workers or n_jobs)
        return self.pool

    def submit(self, overrides: Sequence[str], idx: int):
        context = (self.hydra_context, self.config, self.task_function, Singleton.get_state())
        return self.start(1).submit(context, overrides, idx)

    def flush(self) -> None:
        """Jobs start on submit; nothing is held back."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from concurrent.futures import wait

        from lenet_sweep import devices  # under another sweeper: n_workers, or one per GPU / 2 cores

        # unpacked: a packed worker hosts this project's sweep trials (lenet_sweep.trial) only
        pool = self.start(self.n_workers or devices.default_n_jobs(devices.visible_gpus(), os.cpu_count() or 1))
        returns = []
        for start in range(0, len(job_overrides), pool.n_workers):
            chunk = job_overrides[start:start + pool.n_workers]
            futures = [self.submit(o, initial_job_idx + start + i) for i, o in enumerate(chunk)]
            wait(futures)
            returns += [f.result() for f in futures]
        return returns

    def call(self, fn, *args):
        """``fn(*args)`` in one of the pool's workers, TensorFlow loaded there; None when it has none
        free (lenet_sweep.sweep.pool, lenet_sweep.pack.pool)."""
        call = getattr(self.pool, "call", None)
        return None if call is None else call(fn, *args)

    def shutdown(self, kill: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(kill=kill)
            self.pool = None
