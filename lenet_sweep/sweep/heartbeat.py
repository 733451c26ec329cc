"""Optuna's heartbeat for the trials a sweeper runs, written from a background thread.

``study.optimize`` beats for its trials itself; a sweeper that uses ask/tell must do it. A trial whose
heartbeat is older than the storage's grace period is failed by the next sweeper of the study that
looks (``optuna.storages.fail_stale_trials``), whatever host it ran on. Only RDB storages keep
heartbeats; for the others :attr:`Heartbeat.interval` is None and nothing runs.
"""

from __future__ import annotations

import logging
import threading

from optuna.storages import BaseStorage

log = logging.getLogger(__name__)


def heartbeat_interval(storage: BaseStorage) -> int | None:
    """Seconds between beats for ``storage`` (Optuna's ``_CachedStorage`` around an ``RDBStorage``
    answers for its backend), or None where the storage keeps no heartbeat."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


class Heartbeat:
    def __init__(self, storage: BaseStorage):
        self.storage = storage
        self.interval = heartbeat_interval(storage)
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._thread = None
        if self.interval:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in list(self.trial_ids):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as exc:  # a database hiccup must not kill the sweep
                    log.warning("heartbeat of trial id %s failed: %s: %s", trial_id,
                                type(exc).__name__, exc)

    def add(self, trial_id: int) -> None:
        """Beat for ``trial_id`` now and every ``interval`` seconds until :meth:`discard`."""
        self.trial_ids.add(trial_id)
        if self.interval:
            self.storage.record_heartbeat(trial_id)

    def discard(self, trial_id: int) -> None:
        self.trial_ids.discard(trial_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
