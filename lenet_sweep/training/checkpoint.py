"""A trial's resume point: one file in its job folder, rewritten atomically at each epoch end.

``<job folder>/checkpoint.npz`` holds what continuing a run exactly needs:

- the model's variables in :func:`~lenet_sweep.model.build_lenet`'s order (``model.get_weights()``);
- the optimizer's variables in Keras' order (``optimizer.variables``: iterations, learning rate, then
  its slots; for SGD with momentum one momentum per weight), so a momentum or Adam run continues
  with the state it had;
- the epochs completed, the state of the numpy Generator the in-graph loop draws each epoch's batch
  order from (:mod:`lenet_sweep.model.fast_fit`, a packed slot's own generator), and the XLA chooser's
  state (which variant trains the next chunks);
- the per-epoch metrics logged so far (the MLflow series a resumed run continues), the MLflow run
  it was written for, and the config it trains (less :data:`UNCHECKED` keys, URL passwords masked).

A packed slot (:mod:`lenet_sweep.pack.worker`) writes the same file in its trial's folder, its SGD
velocities laid out as Keras' SGD keeps its momentums, so either kind of worker resumes either
kind's checkpoint.

The file is numpy's ``.npz`` (arrays stored plainly, the rest one JSON string; read without
pickle), written to a temporary file in the same folder, flushed to disk and renamed over the last
one (``os.replace``): a kill at any moment leaves the previous checkpoint or the new one, never
half of one. Imports no TensorFlow, MLflow or Optuna.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lenet_sweep.config import ConfigError
from lenet_sweep.redaction import redact

log = logging.getLogger(__name__)

FILE = "checkpoint.npz"
VERSION = 2  # 2: the run it continues counts MLflow steps from 1 (epoch k = step k)

#: config keys a resumed run may change: where things go, what is printed, the resume options
UNCHECKED = ("trainer.resume", "trainer.checkpoint", "trainer.checkpoint_dir", "trainer.keep_checkpoint",
             "trainer.verbose", "data.dir")
UNCHECKED_PREFIXES = ("mlflow.",)


@dataclass
class Checkpoint:
    epoch: int  # epochs completed (the last one's number: epochs count from 1)
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    history: list[dict[str, float]]  # per-epoch metrics, one entry per completed epoch
    config: dict[str, str] = field(default_factory=dict)  # fingerprint(cfg)
    run_id: str | None = None  # the MLflow run the epochs were logged to
    rng: dict | None = None  # numpy ``Generator.bit_generator.state`` after ``epoch`` permutations
    jit: dict | None = None  # :meth:`lenet_sweep.model.fast_fit.JitChooser.state`

    def write(self, folder: str | os.PathLike) -> Path:
        """Atomically (temporary file, fsync, rename) into ``folder/checkpoint.npz``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path, tmp = folder / FILE, folder / f".{FILE}.{os.getpid()}.tmp"
        meta = {"version": VERSION, "epoch": self.epoch, "history": self.history, "config": self.config,
                "run_id": self.run_id, "rng": self.rng, "jit": self.jit,
                "weights": len(self.weights), "optimizer": len(self.optimizer)}
        arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(self.weights)}
        arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(self.optimizer)})
        try:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
            os.replace(tmp, path)
        except OSError as exc:  # a full disk: name the checkpoint, leave no torn temporary file
            tmp.unlink(missing_ok=True)
            exc.filename = exc.filename or str(path)
            raise
        return path


def path_of(source: str | os.PathLike) -> Path:
    """A job folder's checkpoint file, or ``source`` itself when it names a file."""
    source = Path(source).expanduser()
    return source if source.suffix == ".npz" else source / FILE


def read(source: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint in a job folder (or the file ``source``); None when there is none."""
    path = path_of(source)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("version") != VERSION:
            raise ConfigError(f"{path} is a checkpoint of format {meta.get('version')}, not {VERSION}: "
                              "it cannot be resumed by this version")
        weights = [z[f"w{i}"] for i in range(meta["weights"])]
        optimizer = [z[f"o{i}"] for i in range(meta["optimizer"])]
    return Checkpoint(meta["epoch"], weights, optimizer, meta["history"], meta["config"],
                      meta["run_id"], meta["rng"], meta["jit"])


def remove(folder: str | os.PathLike | None) -> None:
    """The job folder's checkpoint, and any temporary file a killed writer left, are gone."""
    if folder is None:
        return
    path = path_of(folder)
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _flat(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: redact(str(tree))}


def fingerprint(cfg: DictConfig) -> dict[str, str]:
    """What a run trains: every resolved config value under its dotted key, less :data:`UNCHECKED`."""
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return {k: v for k, v in _flat(tree).items()
            if k not in UNCHECKED and not k.startswith(UNCHECKED_PREFIXES)}


def for_retry(source: str, cfg: DictConfig) -> Checkpoint | None:
    """A retried trial's resume point: its failed attempt's checkpoint in ``source``, if there is one
    of this config; else None, and the trial trains from its first epoch. A re-launched sweep may fix
    other values (more epochs, more data): the old attempt's state then says nothing about this one,
    which is said in one line, not a failure."""
    try:
        ckpt = read(source)
        if ckpt is None:
            return None
        check(ckpt, cfg, source, named=False)
    except ConfigError as exc:  # another config, or a format this version cannot resume
        log.warning("%s; the trial trains from its first epoch", exc)
        return None
    return ckpt


def check(ckpt: Checkpoint, cfg: DictConfig, source: str, named: bool = True) -> None:
    """A ConfigError unless ``cfg`` trains what ``ckpt``'s run trained (it would not end as that run).
    ``named``: the user gave ``source`` (``trainer.resume``), else a sweeper (a retried trial)."""
    now = fingerprint(cfg)
    differ = sorted(k for k in set(now) | set(ckpt.config) if now.get(k) != ckpt.config.get(k))
    if differ:
        shown = ", ".join(f"{k}={ckpt.config.get(k, '<unset>')} (now {now.get(k, '<unset>')})"
                          for k in differ[:5])
        what = f"trainer.resume={source}" if named else f"the failed attempt's checkpoint in {source}"
        raise ConfigError(f"{what}: the checkpoint was written by a run of another config; resume "
                          f"with the same keys: {shown}")


# -- a Keras model's state ------------------------------------------------------------------------
def model_state(model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A compiled model's variables and its optimizer's, as numpy arrays."""
    return model.get_weights(), [np.asarray(v.numpy()) for v in model.optimizer.variables]


def restore_model(model, ckpt: Checkpoint) -> None:
    """Put ``ckpt``'s variables into a compiled ``model`` of the same config (its optimizer is built
    first, as ``fit`` would build it)."""
    model.set_weights(ckpt.weights)
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    if len(opt.variables) != len(ckpt.optimizer):
        raise ConfigError(f"the checkpoint holds {len(ckpt.optimizer)} optimizer variables, this "
                          f"optimizer {len(opt.variables)}: not a checkpoint of this config")
    for var, value in zip(opt.variables, ckpt.optimizer):
        if tuple(var.shape) != value.shape:
            raise ConfigError(f"optimizer variable {var.path} is {tuple(var.shape)} here, {value.shape} "
                              "in the checkpoint: not a checkpoint of this config")
        var.assign(value)


# -- a packed slot as Keras' SGD ------------------------------------------------------------------
def sgd_variables(iterations: int, lr: float, momentum: float,
                  velocities: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A packed slot's optimizer state in the layout of ``keras.optimizers.SGD.variables``: its step
    count, its learning rate and, with momentum, one momentum per weight (Keras' SGD makes none
    without momentum; a slot's velocity then never enters an update)."""
    out = [np.asarray(iterations, np.int64), np.asarray(lr, np.float32)]
    return out + ([np.asarray(v) for v in velocities] if momentum != 0 else [])


def sgd_velocities(ckpt: Checkpoint, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The per-weight velocities of an SGD checkpoint (zeros when it was written without momentum)."""
    slots = ckpt.optimizer[2:]
    if not slots:
        return [np.zeros(s, np.float32) for s in shapes]
    if [tuple(v.shape) for v in slots] != [tuple(s) for s in shapes]:
        raise ConfigError("the checkpoint's optimizer is not SGD over these weights: a packed worker "
                          "resumes SGD checkpoints only")
    return slots
