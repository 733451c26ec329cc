"""Reachability of the stores a run or sweep writes to, checked before anything is created there.

Each check raises :class:`StoreError`, whose message is one line naming the key and the URL (password
masked) and what to check. ``retry_race`` retries only what is transient: processes that start
together on a fresh database race to create its tables.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import os
import random
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from lenet_sweep.config import UserError
from lenet_sweep.redaction import redact

CONNECT_TIMEOUT_S = 5


class StoreError(UserError):
    """A store that cannot be reached or written; the message says which and what to check."""


def _transient(exc: BaseException) -> bool:
    """A table- or experiment-creation race, or SQLite's lock: worth another try."""
    import sqlalchemy.exc

    if isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)):
        return True
    text = str(exc)
    return "database is locked" in text or "already exists" in text or "UNIQUE constraint" in text


def retry_race(create, attempts: int = 5):
    """``create()``, retried (at most ``attempts`` times) while it fails by a creation race."""
    for attempt in range(attempts):
        try:
            return create()
        except Exception as exc:
            if attempt == attempts - 1 or not _transient(exc):
                raise
            time.sleep(0.5 + random.random())


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive lock on ``path`` (created) for processes on this host; released on exit, also
    when the process dies."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_writable_dir(folder: Path, key: str) -> None:
    """``folder`` exists (or is created) and takes a file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise StoreError(f"{key}: cannot write in {folder} ({exc.strerror or exc}); "
                         f"choose a writable folder") from None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return redact(lines[0] if lines else type(orig).__name__)


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL; None for any other URL (a server, a journal path)."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def check_database(url: str, key: str) -> None:
    """Connect to a SQLAlchemy database URL once, with a short timeout."""
    import sqlalchemy
    import sqlalchemy.exc

    shown = redact(url)
    if (path := sqlite_path(url)) is not None:
        check_writable_dir(path.parent, f"{key}={shown}")
        if not path.exists():  # connecting would create it: a writable folder is all there is to check
            return
    try:
        engine = sqlalchemy.create_engine(url)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"{key}={shown} is not a database URL this installation can open "
                         f"({_first_line(exc)}); e.g. postgresql+psycopg://user@host:5432/db "
                         f"or sqlite:///path.db") from None
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if engine.dialect.name == "postgresql" else {}
    engine.dispose()
    engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as exc:
        raise StoreError(f"{key}={shown}: cannot connect ({_first_line(exc)}); check that the "
                         f"server runs at that host and port and that the database and user exist") from None
    finally:
        engine.dispose()


def check_mlflow_server(uri: str, key: str = "mlflow.tracking_uri") -> None:
    """An ``http(s)://`` tracking URI answers MLflow's ``/health`` (MLflow's own client would
    retry for minutes before giving up)."""
    shown = redact(uri)
    parts = urllib.parse.urlsplit(uri)
    headers = {}
    if parts.username is not None:  # user:password@host: basic auth, as MLflow's client sends it
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    request = urllib.request.Request(urllib.parse.urlunsplit(parts).rstrip("/") + "/health", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise StoreError(f"{key}={shown}: no MLflow server answers ({reason}); start one "
                     f"(mlflow server --host HOST --port PORT) or fix the URI")


def check_tracking_uri(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        check_mlflow_server(uri)
    elif "://" in uri and not uri.startswith(("file:", "databricks")):
        check_database(uri, "mlflow.tracking_uri")


def check_optuna_storage(url: str) -> None:
    """An RDB URL connects; a journal file's folder is writable."""
    if "://" in url:
        check_database(url, "hydra.sweeper.storage")
    else:
        check_writable_dir(Path(url).parent, f"hydra.sweeper.storage={url}")


def default_optuna_storage() -> str:
    """``<project>/multirun/optuna.journal`` (an Optuna journal file)."""
    from lenet_sweep import PROJECT_ROOT

    return str(PROJECT_ROOT / "multirun" / "optuna.journal")


def open_optuna_storage(url: str | None, heartbeat_interval: int | None = None,
                        grace_period: int | None = None):
    """An RDB URL (``postgresql+psycopg://…``, ``sqlite:///…``) or a journal file path (default).

    RDB storages get Optuna's heartbeat settings: a trial whose sweeper stops beating for
    ``grace_period`` seconds is failed by the next sweeper that looks (lenet_sweep.sweep.liveness).
    """
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileSymlinkLock

    url = url or default_optuna_storage()
    if "://" in url:
        beat = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period) \
            if heartbeat_interval else {}
        # pool_pre_ping: a pooled connection the server dropped (restart, pg_terminate_backend) is
        # replaced before use instead of failing the next storage call
        return retry_race(lambda: RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **beat))
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileSymlinkLock(url)  # the backend's own default lock, shared with the repair
    backend = _journal_backend()(url, lock_obj=lock)  # creates the file
    repair_journal(url, lock)
    try:
        return JournalStorage(backend)  # Optuna's replay: raises on a bad line with lines after it
    except ValueError:
        check_journal_lines(url, os.path.getsize(url))  # which line, as a StoreError
        raise


# -- a journal file's last line -------------------------------------------------------------------
# Optuna's JournalFileBackend appends a batch of records as JSON lines, each with its newline, in
# one write under its lock (``<file>.lock``), and its readers skip a last line without a newline:
# that is a write still going on, or one whose process died. Left there, the next append is glued
# to it and every later read of the file fails. So before a process opens the file, a last line
# without its newline is cut off under that same lock (no live writer is then mid-line). A complete
# line that is not JSON is damage that no write of Optuna's leaves, wherever it is, the last line
# included (it is no torn write: it has its newline): StoreError, and the file is left unchanged.
def _tail(path: str) -> tuple[bytes, int, bytes]:
    """(the last complete line, the offset past it, the bytes after it), read from the end (plain
    reads: a mapped file that another process truncates faults)."""
    with open(path, "rb") as f:
        start = f.seek(0, os.SEEK_END)
        data = b""
        while start > 0 and data.count(b"\n") < 2:
            step = min(start, 1 << 16)
            start -= step
            f.seek(start)
            data = f.read(step) + data
    cut = data.rfind(b"\n") + 1
    return data[data.rfind(b"\n", 0, max(cut - 1, 0)) + 1:cut], start + cut, data[cut:]


def check_journal_lines(path: str, end: int) -> None:
    """Every complete line before byte ``end`` is JSON, else StoreError naming the first that is not."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            offset += len(line)
            if offset > end or not line.endswith(b"\n"):  # past ``end``, or a write going on
                return
            try:
                json.loads(line)
            except ValueError as exc:
                raise StoreError(
                    f"{path}: line {number} is not an Optuna journal record "
                    f"({getattr(exc, 'msg', 'not UTF-8 text')}): the file is damaged and nothing was "
                    f"written to it; restore it from a backup, or start the study in a new journal "
                    f"(hydra.sweeper.storage=NEW.journal)") from None


@functools.cache
def _journal_backend():
    """Optuna's JournalFileBackend, less its one silence (imported when first needed: this module
    is imported by processes that never open a study)."""
    from optuna.storages.journal import JournalFileBackend

    class NamedJournal(JournalFileBackend):
        """Optuna's journal file whose refused append (a full disk) names the file: it writes into
        an open file, so its OSError names none."""

        def append_logs(self, logs) -> None:
            try:
                super().append_logs(logs)
            except OSError as exc:
                if exc.filename is None:
                    exc.filename = self._file_path
                raise

    return NamedJournal


def repair_journal(path: str, lock) -> None:
    """Cut a last line without its newline off the journal at ``path`` (``lock``: its backend's),
    keep it in ``<path>.torn-<time>`` and say so in one line; StoreError if a complete line is not JSON
    (its last one checked here, those before it by Optuna's replay or, when cutting, here)."""
    last, end, fragment = _tail(path)
    if fragment:
        lock.acquire()  # blocks while a writer appends; a lock left by a killed one is broken after 30 s
        try:
            last, end, fragment = _tail(path)  # again: what looked torn may have been a live append
            if fragment:
                check_journal_lines(path, end)  # damaged elsewhere: left as it is
                backup = f"{path}.torn-{time.strftime('%Y%m%d-%H%M%S')}"
                try:
                    with open(backup, "ab") as f:
                        f.write(fragment)
                        f.flush()
                        os.fsync(f.fileno())
                except OSError as exc:  # a full disk still: nothing cut, no half backup left
                    with contextlib.suppress(OSError):
                        os.unlink(backup)
                    raise StoreError(f"{path}: its last line was cut short (a write that never "
                                     f"completed) and cannot be kept aside: cannot write {backup}: "
                                     f"{exc.strerror}; free space there and run again") from None
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
                print(f"warning: {path}: its last line was cut short ({len(fragment)} bytes, a write that "
                      f"never completed); removed it, kept in {backup}", file=sys.stderr, flush=True)
        finally:
            lock.release()
    if last:
        try:
            json.loads(last)
        except ValueError:
            check_journal_lines(path, end)
