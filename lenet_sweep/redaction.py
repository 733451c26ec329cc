"""Passwords in URLs never reach MLflow, Hydra's saved files, logs or printed lines.

:func:`redact` masks the password of every ``scheme://user:password@host`` in a text;
:class:`RedactSavedConfig` is a Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``) that
rewrites the files Hydra saves (``<output dir>/.hydra/*.yaml``, a sweep's ``multirun.yaml``) redacted.
Imports nothing heavy: Hydra instantiates the callback before every run.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: ``scheme://user:password@`` — the password runs to the last ``@`` before white space or a quote,
#: so an unencoded ``@`` or ``/`` in it is masked too (when in doubt, mask more).
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*):(?P<password>[^\s'\"]*)@")
MASK = "***"


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``
    (``postgresql://u:pw@h/db`` → ``postgresql://u:***@h/db``); anything else is left as it is."""
    if not text or "://" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)


def redact_file(path: Path) -> bool:
    """Rewrite ``path`` redacted if it holds a password; True if it changed."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    clean = redact(text)
    if clean == text:
        return False
    path.write_text(clean)
    return True


def _redacting_factory(previous):
    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if "://" in str(record.msg) or (record.args and "://" in str(record.args)):
            try:
                message = record.getMessage()
            except Exception:  # a malformed record: logging reports it as it would anyway
                return record
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, ()
        return record

    factory.lenet_redacting = True
    return factory


def redact_logging() -> None:
    """Every log record made in this process from now on has its URL passwords masked (Hydra's
    launchers log each job's overrides, e.g. ``mlflow.tracking_uri=http://u:pw@host``). Idempotent."""
    previous = logging.getLogRecordFactory()
    if not getattr(previous, "lenet_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(previous))


def _select(config: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(config, key, throw_on_missing=False)
    except Exception:  # an interpolation that does not resolve here
        return None


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra-core < 1.1
    Callback = object  # type: ignore[misc,assignment]


class RedactSavedConfig(Callback):
    """Masks passwords in the files Hydra writes: a job's ``.hydra/{config,hydra,overrides}.yaml``
    (saved by Hydra just before ``on_job_start``, also in sweep trials, which run Hydra's ``run_job``
    in worker processes) and the sweep folder's ``multirun.yaml``. Interpolations such as
    ``${oc.env:LENET_STORAGE}`` are saved unresolved by Hydra and stay so. Log records are redacted
    too (:func:`redact_logging`)."""

    def __init__(self) -> None:
        redact_logging()  # Hydra makes its callbacks before the first log line of a run or sweep

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        redact_logging()  # also in a launcher's worker process (the callback arrives pickled)
        output_dir, subdir = _select(config, "hydra.runtime.output_dir"), _select(config, "hydra.output_subdir")
        if output_dir and subdir:
            folder = Path(str(output_dir)) / str(subdir)
            for path in folder.glob("*.yaml") if folder.is_dir() else ():
                redact_file(path)

    def _multirun_file(self, config: DictConfig) -> None:
        sweep_dir = _select(config, "hydra.sweep.dir")
        if sweep_dir:
            path = Path(str(sweep_dir)) / "multirun.yaml"
            if path.is_file():
                redact_file(path)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._multirun_file(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._multirun_file(config)
