"""Long-lived worker processes that run Hydra jobs, one trial at a time each, with no batch barrier.

Each worker slot is a one-process ``ProcessPoolExecutor`` (spawned, so no TensorFlow or CUDA state is
inherited), started with its device placement in the environment, and kept for the whole sweep so
TensorFlow is imported once per worker, not once per trial. ``submit`` returns a future as soon as a
slot is free; the sweeper waits for the first one to finish and starts the next trial there.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Sequence

import cloudpickle
import optuna
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus

from lenet_sweep import devices, tracking


class JobFailed(Exception):
    """A failed job's exception as its one line (``tracking.error_line``) and its formatted
    traceback. Unpickling the original in the sweeper would import its module, TensorFlow's or Keras'
    included (seconds, with the slot held); an exception that does not pickle at all is covered too."""

    def __init__(self, line: str, traceback_text: str = ""):
        super().__init__(line)
        self.traceback_text = traceback_text


class WorkerDied(RuntimeError):
    """The worker process running a trial died (killed, out of memory, crashed): the trial did not
    fail by itself, so the sweeper retries it with ``hydra.sweeper.retry_failed``."""


#: seconds a worker whose sweeper is gone gives its running job to close its MLflow run
ORPHAN_GRACE_S = 15


def _watch_parent(parent_pid: int) -> None:
    """A worker never outlives its sweeper: once the parent is gone (killed by any signal, even
    during the worker's start-up), SIGTERM this process (a running job closes its MLflow run as
    KILLED; an idle worker just ends), then exit for good."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _init_worker(place: devices.Placement, parent_pid: int) -> None:
    from lenet_sweep.quiet import filter_for_this_process

    filter_for_this_process()  # TensorFlow's start-up and first-use notes, whenever they come
    devices.assign(place)
    if os.getppid() != parent_pid:  # the sweeper died while this process started
        os._exit(1)
    if sys.platform.startswith("linux"):  # the sweeper died (even by SIGKILL): get SIGTERM, so the
        libc = ctypes.CDLL(None, use_errno=True)  # running job closes its MLflow run as KILLED
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="watch-sweeper").start()


def _run_job(payload: bytes) -> bytes:
    """In the worker: compose the job's config and run it as Hydra's launchers do."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import open_dict

    hydra_context, config, task_function, singleton_state, overrides, idx = cloudpickle.loads(payload)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    if ret.status == JobStatus.FAILED and not isinstance(ret._return_value, optuna.TrialPruned):
        exc = ret._return_value
        ret._return_value = JobFailed(tracking.error_line(exc),
                                      tracking.redact("".join(traceback.format_exception(exc))))
    return cloudpickle.dumps(ret)


def _result(future: Future, overrides: Sequence[str]) -> JobReturn:
    try:
        return cloudpickle.loads(future.result())
    except BrokenProcessPool:
        error: BaseException = WorkerDied("the worker process died (killed or out of memory)")
    except BaseException as exc:  # noqa: BLE001 - reported as the job's failure
        error = exc
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)


class WorkerPool:
    def __init__(self, n_workers: int, gpus: list[str] | None = None, cpus: int | None = None):
        self.n_workers = n_workers
        self.gpus = devices.visible_gpus() if gpus is None else gpus
        self.cpus = cpus or os.cpu_count() or 1
        self.slots: list[ProcessPoolExecutor | None] = [None] * n_workers
        self.busy: dict[int, Future] = {}

    def free_slot(self) -> int | None:
        return next((s for s in range(self.n_workers) if s not in self.busy), None)

    def _executor(self, slot: int) -> ProcessPoolExecutor:
        executor = self.slots[slot]
        if executor is None or getattr(executor, "_broken", False):
            place = devices.placement(slot, self.n_workers, self.gpus, self.cpus)
            executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_init_worker, initargs=(place, os.getpid()))
            self.slots[slot] = executor
        return executor

    def submit(self, context: tuple[Any, ...], overrides: Sequence[str], idx: int) -> Future:
        """Run one job on a free slot; the future's result is its ``JobReturn`` (never raises)."""
        slot = self.free_slot()
        if slot is None:
            raise RuntimeError("no free worker slot")
        payload = cloudpickle.dumps((*context, list(overrides), idx))
        inner = self._executor(slot).submit(_run_job, payload)
        outer: Future = Future()
        self.busy[slot] = outer

        def done(f: Future) -> None:
            self.busy.pop(slot, None)
            outer.set_result(_result(f, overrides))

        inner.add_done_callback(done)
        return outer

    def call(self, fn, *args):
        """``fn(*args)`` in a started worker (TensorFlow already imported there), waiting for its
        result; None when no worker is up. The sweeper registers its winner this way."""
        executor = next((e for e in self.slots if e is not None and not getattr(e, "_broken", False)), None)
        return None if executor is None else executor.submit(fn, *args).result()

    def shutdown(self, kill: bool = False) -> None:
        for executor in self.slots:
            if executor is None:
                continue
            if kill:
                for process in list((executor._processes or {}).values()):
                    process.terminate()  # SIGTERM: the job closes its MLflow run as KILLED
            executor.shutdown(wait=True, cancel_futures=True)
        self.slots = [None] * self.n_workers
