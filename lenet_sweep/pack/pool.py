"""Workers that each host ``pack`` trials at once (``hydra.launcher.pack``), for the sweeper's
asynchronous loop: ``submit`` returns one future per trial, as :class:`~lenet_sweep.sweep.pool.WorkerPool`
does, and a worker takes a new trial into a freed slot at its next epoch boundary.

Each worker is a one-process ``ProcessPoolExecutor`` (spawned, placed, watched like the unpacked
pool's workers) running :class:`lenet_sweep.pack.worker.PackWorker` for the whole sweep. Trials go
to a worker through its own queue; results come back through one shared queue, read by a thread
here that completes the trials' futures. A worker that dies fails every trial it held.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Sequence

import cloudpickle
from hydra.core.utils import JobReturn, JobStatus

from lenet_sweep import devices, tracking
from lenet_sweep.sweep.pool import JobFailed, WorkerDied, _init_worker

_INBOX = _OUTBOX = None  # in a worker: its queues

#: trials a worker holds beyond its slots: its starter prepares one while the pack trains, and it
#: enters the first slot that frees, at that epoch boundary. Without it a freed slot waits for its
#: trial's record (test evaluation, pictures, weights: seconds) to reach the sweeper, for the next
#: trial to be asked and sent, and for its preparation: one or two of its neighbours' epochs.
SPARE = 1


def _init_pack_worker(place: devices.Placement, parent_pid: int, inbox, outbox) -> None:
    global _INBOX, _OUTBOX
    _INBOX, _OUTBOX = inbox, outbox
    _init_worker(place, parent_pid)


def _emit(idx: int, overrides: list[str], value: Any, exc: BaseException | None) -> None:
    """In the worker: one trial's end as the pickled ``JobReturn`` its unpacked job would give."""
    import optuna

    if exc is None:
        ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=value)
    else:
        if not isinstance(exc, optuna.TrialPruned):
            exc = JobFailed(tracking.error_line(exc), tracking.redact("".join(traceback.format_exception(exc))))
        ret = JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=exc)
    _OUTBOX.put((idx, cloudpickle.dumps(ret)))


def _run_pack(context: bytes, size: int) -> None:
    from lenet_sweep.pack.worker import PackWorker  # TensorFlow's start-up lines filtered (quiet.py)

    PackWorker(cloudpickle.loads(context), size, _INBOX, _emit).run()


class PackPool:
    def __init__(self, n_workers: int, pack: int, gpus: list[str] | None = None, cpus: int | None = None):
        self.n_workers, self.pack = n_workers, pack
        self.spares = n_workers * SPARE  # trials the sweeper may keep in flight beyond the slots
        self.gpus = devices.visible_gpus() if gpus is None else gpus
        self.cpus = cpus or os.cpu_count() or 1
        self._mp = multiprocessing.get_context("spawn")
        self.workers: list[dict | None] = [None] * n_workers
        self.retired: list[dict] = []  # workers whose pack ended for a call (:meth:`call`)
        self.futures: dict[int, tuple[int, Future, list[str]]] = {}  # idx -> (worker, future, overrides)
        self.outbox = self._mp.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True, name="pack-results")
        self._reader.start()

    def _read(self) -> None:
        while True:
            item = self.outbox.get()
            if item is None:
                return
            idx, payload = item
            with self._lock:
                entry = self.futures.pop(idx, None)
            if entry is not None:
                entry[1].set_result(cloudpickle.loads(payload))

    def _held(self, worker: int) -> int:
        return sum(1 for w, _, _ in self.futures.values() if w == worker)

    def free_slot(self) -> int | None:
        with self._lock:
            return next((w for w in range(self.n_workers) if self._held(w) < self.pack + SPARE), None)

    def _worker(self, w: int, context: tuple) -> dict:
        worker = self.workers[w]
        if worker is None:
            place = devices.placement(w, self.n_workers, self.gpus, self.cpus)
            inbox = self._mp.Queue()
            executor = ProcessPoolExecutor(max_workers=1, mp_context=self._mp, initializer=_init_pack_worker,
                                           initargs=(place, os.getpid(), inbox, self.outbox))
            loop = executor.submit(_run_pack, cloudpickle.dumps(context), self.pack)
            worker = self.workers[w] = {"executor": executor, "inbox": inbox, "loop": loop}
            loop.add_done_callback(lambda f, w=w: self._ended(w, f))
        return worker

    def _ended(self, w: int, loop: Future) -> None:
        """A worker's loop ended (shut down, killed, crashed): fail the trials it still held."""
        error = None if loop.cancelled() else loop.exception()
        with self._lock:
            if self.workers[w] is not None and self.workers[w]["loop"] is loop:
                self.workers[w] = None
            if error is None:  # shut down with no trial held: results are all in the queue
                return
            lost = [(idx, f, o) for idx, (ww, f, o) in self.futures.items() if ww == w]
            for idx, _, _ in lost:
                self.futures.pop(idx)
        reason = "the worker process died (killed or out of memory)"  # the pool's error says no more
        for _, future, overrides in lost:
            future.set_result(JobReturn(overrides=list(overrides), status=JobStatus.FAILED,
                                        _return_value=WorkerDied(reason)))

    def submit(self, context: tuple, overrides: Sequence[str], idx: int) -> Future:
        """Hand one trial to a worker with a free slot; the future's result is its ``JobReturn``."""
        w = self.free_slot()
        if w is None:
            raise RuntimeError("no free pack slot")
        worker = self._worker(w, context)
        future: Future = Future()
        with self._lock:
            self.futures[idx] = (w, future, list(overrides))
        worker["inbox"].put((idx, list(overrides)))
        return future

    def call(self, fn, *args):
        """``fn(*args)`` in a worker that holds no trial (TensorFlow already imported there), waiting
        for its result: its pack's loop is ended first, so the worker takes no trial after this (the
        sweeper registers its winner this way, once its trials are done). None when every worker
        holds trials or none is up."""
        with self._lock:
            w = next((w for w, worker in enumerate(self.workers) if worker is not None and not self._held(w)),
                     None)
            worker = None if w is None else self.workers[w]
        if worker is None:
            return None
        worker["inbox"].put(None)  # the pack's loop returns; the process stays for this call
        if worker["loop"].exception() is not None:
            return None
        self.retired.append(worker)
        return worker["executor"].submit(fn, *args).result()

    def shutdown(self, kill: bool = False) -> None:
        workers = [*filter(None, self.workers), *self.retired]
        for worker in workers:
            if kill:
                for process in list((worker["executor"]._processes or {}).values()):
                    process.terminate()  # SIGTERM: every slot's run is closed KILLED
            else:
                worker["inbox"].put(None)
        for worker in workers:
            worker["executor"].shutdown(wait=True, cancel_futures=True)
        self.workers, self.retired = [None] * self.n_workers, []
