"""One ask at a time per study, across every sweeper of it: "count the study's trials, then ask for
one" is atomic, so ``n_trials`` is exact however many sweepers share the study."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileOpenLock

from lenet_sweep import stores
from lenet_sweep.stores import default_optuna_storage


@contextlib.contextmanager
def ask_lock(storage: BaseStorage, url: str | None, study_name: str) -> Iterator[None]:
    """Serialise "count the study's trials, then ask for one" across every worker of the study, so
    n_trials is exact: PostgreSQL's advisory lock, or Optuna's file lock beside a file storage."""
    url = url or default_optuna_storage()
    storage = getattr(storage, "_backend", storage)  # a study's storage is Optuna's cache around it
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        key = int(hashlib.sha256(study_name.encode()).hexdigest()[:15], 16)
        with storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    path = url if "://" not in url else stores.sqlite_path(url)  # a journal file, a SQLite file
    if path is None:  # another database: Optuna's own atomic trial numbering, no extra lock
        yield
        return
    lock = JournalFileOpenLock(f"{path}.{study_name}.ask")
    lock.acquire()  # blocks; a lock left by a killed process is broken after 30 s
    try:
        yield
    finally:
        lock.release()
