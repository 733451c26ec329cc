"""MLflow: where runs are stored, a run's lifecycle, and what each run logs. No TensorFlow here."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import posixpath
import signal
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lenet_sweep import PROJECT_ROOT, stores
from lenet_sweep.config import flatten
from lenet_sweep.redaction import redact  # also tracking.redact: masks URL passwords in a text

#: Keys kept out of a run's params: secrets (a URL may hold a password).
PRIVATE_KEYS = ("mlflow.tracking_uri",)


def default_tracking_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def tracking_uri(mlflow_cfg) -> str:
    uri = mlflow_cfg.tracking_uri or default_tracking_uri()
    if redact(uri) != uri:  # MLflow prints "View run at <uri>/#/..." for a server: not with a password
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return uri


def mask_url(url: str | None) -> str | None:
    """The URL with any password replaced by ``***`` (safe for tags, logs and printed lines)."""
    return redact(url) if url else url


def artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go to ``mlruns/`` beside the database file, whatever the cwd;
    a server decides for itself (None)."""
    path = stores.sqlite_path(uri)
    return (path.parent / "mlruns").resolve().as_uri() if path is not None else None


_CHECKED: set[str] = set()
_CREATED: set[str] = set()


def check_store(mlflow_cfg) -> str:
    """The tracking URI, its store checked once per process (reachable; nothing created)."""
    uri = tracking_uri(mlflow_cfg)
    if uri not in _CHECKED:
        stores.check_tracking_uri(uri)
        _CHECKED.add(uri)
    return uri


#: a write the disk refused (full, over quota, read-only, file too big): the user's to fix, one line
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def write_error(exc: BaseException) -> str | None:
    """``cannot write PATH: No space left on device`` for a write the disk refused; else None."""
    if not isinstance(exc, OSError) or exc.errno not in WRITE_ERRNOS:
        return None
    path = exc.filename2 or exc.filename  # a copy's destination, else the file
    return f"cannot write{f' {path}' if path else ''}: {exc.strerror or os.strerror(exc.errno)}"


@contextlib.contextmanager
def writing(path: str | os.PathLike | Callable[[], str]) -> Iterator[None]:
    """A refused write below that names no file (a write into an open file names none) names
    ``path`` (or what ``path()`` says)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno in WRITE_ERRNOS:
            with contextlib.suppress(Exception):  # the path is a courtesy: never hide the error
                exc.filename = str(path() if callable(path) else path)
        raise


class Client(MlflowClient):
    """An MlflowClient whose refused artifact write names its destination (MLflow writes into an
    open temporary file: its OSError names none). ``log_text`` and the like come through here."""

    def log_artifact(self, run_id, local_path, artifact_path=None) -> None:
        def destination() -> str:
            root = self.get_run(run_id).info.artifact_uri
            if root.startswith("file:"):
                from mlflow.utils.file_utils import local_file_uri_to_path

                root = local_file_uri_to_path(root)
            return posixpath.join(root, artifact_path or "", os.path.basename(local_path))

        with writing(destination):
            super().log_artifact(run_id, local_path, artifact_path)


def client_for(mlflow_cfg) -> MlflowClient:
    """A client of the configured store (MLflow creates a database's tables on first use). The
    store is checked once per process first: an unreachable one is a one-line ``StoreError``."""
    uri = check_store(mlflow_cfg)
    if uri not in _CREATED:
        if (path := stores.sqlite_path(uri)) is not None:  # MLflow creates and migrates the schema on
            with stores.file_lock(f"{path}.lock"):  # first use: one process at a time
                MlflowClient(uri).search_experiments(max_results=1)
        _CREATED.add(uri)
    return stores.retry_race(lambda: Client(uri))


def experiment_id(client: MlflowClient, name: str) -> str:
    """Get or create the experiment (create it once, before parallel workers start)."""
    def get_or_create() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri))

    return stores.retry_race(get_or_create)


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """Every resolved config value under its dotted key (``optimizer.lr``, ``model.activation``)."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return {k: redact(str(v)) for k, v in flat.items() if k not in PRIVATE_KEYS}


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, object],
               tags: Mapping[str, str] = {}) -> None:
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float],
                step: int = 0) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def error_line(exc: BaseException, limit: int = 4000) -> str:
    """``Type: message`` on one line with URL passwords masked (a run's ``error`` tag, a trial's
    ``fail_reason``)."""
    text = " ".join("".join(traceback.format_exception_only(type(exc), exc)).split())
    return redact(text)[:limit]


ERROR_ARTIFACT = "error.txt"


def log_traceback(client: MlflowClient, run_id: str, exc: BaseException | str) -> None:
    """The full traceback (passwords masked) as the run's ``error.txt``; the ``error`` tag keeps the
    one line. Never raises: the run's status matters more."""
    text = exc if isinstance(exc, str) else "".join(traceback.format_exception(exc))
    try:
        client.log_text(run_id, redact(text), ERROR_ARTIFACT)
    except Exception:  # noqa: BLE001
        pass


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (kill, a scheduler's cancel) raises SystemExit so the run below is closed KILLED."""
    def handler(signum, frame):
        _SIGNALLED.append(signum)
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@functools.cache
def _mlflow_context() -> dict[str, str]:
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags()


def context_tags(tags: Mapping[str, str] | None = None) -> dict[str, str]:
    """``tags`` over MLflow's own context tags (``mlflow.user``, ``mlflow.source.name`` and ``.type``,
    the git commit: what ``mlflow.start_run`` adds and the UI shows as "Created by" and "Source"),
    resolved once per process."""
    return {**_mlflow_context(), **(tags or {})}


def create_run(client: MlflowClient, experiment: str, run_id: str | None = None,
               run_name: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """A new RUNNING run with MLflow's context tags and ``tags``, or ``tags`` set on ``run_id`` (a
    sweep trial's, created by its sweeper)."""
    if run_id is None:
        return client.create_run(experiment_id(client, experiment), run_name=run_name,
                                 tags=context_tags(tags)).info.run_id
    if tags:
        log_params(client, run_id, {}, tags)
    return run_id


@contextlib.contextmanager
def open_run(client: MlflowClient, experiment: str, run_id: str | None = None,
             run_name: str | None = None, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Create a run (or write into ``run_id``, created RUNNING by a sweeper for its trial) and always
    end it with the right status: FINISHED, FAILED (exception, tagged ``error``, traceback in
    ``error.txt``) or KILLED (Ctrl-C, SIGTERM)."""
    run_id = create_run(client, experiment, run_id, run_name, tags)
    with sigterm_as_exit():
        try:
            yield run_id
        except BaseException as exc:
            end_run(client, run_id, exc)
            raise
        end_run(client, run_id)


#: signals :func:`sigterm_as_exit` turned into SystemExit in this process: whatever ends a run after one
#: is the interruption, even when the SystemExit surfaced wrapped (raised inside TensorFlow's tracing it
#: comes out as a StagingError)
_SIGNALLED: list[int] = []


def end_run(client: MlflowClient, run_id: str, exc: BaseException | None = None) -> None:
    """End ``run_id`` as ``exc`` says: FINISHED (None), KILLED (Ctrl-C, SIGTERM) or FAILED (tagged
    ``error``, traceback in ``error.txt``)."""
    if exc is None:
        client.set_terminated(run_id, "FINISHED")
    elif isinstance(exc, (KeyboardInterrupt, SystemExit)) or _SIGNALLED:
        name = type(exc).__name__ if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "SIGTERM"
        client.set_tag(run_id, "error", f"interrupted ({name})")
        client.set_terminated(run_id, "KILLED")
    else:
        client.set_tag(run_id, "error", error_line(exc))
        log_traceback(client, run_id, exc)
        client.set_terminated(run_id, "FAILED")


def log_redacted_dir(client: MlflowClient, run_id: str, folder: Path, artifact_path: str) -> None:
    """Upload the text files of ``folder`` (Hydra's ``.hydra/``) with every URL password masked."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            target = Path(tmp) / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                target.write_text(redact(path.read_text()))
            except UnicodeDecodeError:
                continue  # not text: Hydra writes only YAML here
        client.log_artifacts(run_id, tmp, artifact_path)
