"""What one MLflow run records, from its params to its end: the one place a single run
(:func:`lenet_sweep.training.train.train`), an unpacked sweep trial and a packed one (:mod:`lenet_sweep.pack.worker`)
are recorded and ended.

:class:`RunRecord` opens with the params, provenance, model table and config (:meth:`~RunRecord.start`),
logs each epoch through its :class:`EpochLogger` (a Keras callback, or driven by the packed worker),
and ends the run once: :meth:`~RunRecord.finish` (test metrics, pictures, weights, phases, FINISHED,
the checkpoint removed, the model registered if asked) or :meth:`~RunRecord.fail` (phases, FAILED with
the ``error`` tag and ``error.txt``, or KILLED; never raises).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from lenet_sweep.quiet import import_tensorflow

import_tensorflow()  # first: TensorFlow's C++ start-up lines filtered (lenet_sweep.quiet)
import keras  # noqa: E402
import numpy as np
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lenet_sweep import data, provenance, registry, tracking
from lenet_sweep.config import TrainingDiverged, UserError
from lenet_sweep.training import checkpoint, runtime

log = logging.getLogger(__name__)


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics to MLflow, with epoch time and throughput; stops on NaN. Epochs count from 1
    (as Keras prints them, "Epoch 1/2"): epoch ``k`` is MLflow step ``k``; Keras' callbacks get the
    0-based index, converted here.

    The MLflow call runs in a background thread, off the training loop's path; ``close`` waits for
    it (``train`` calls it before anything else goes to the run). ``log_seconds`` is the time spent
    in those calls. A resumed run's logger gets the earlier epochs through ``replay`` and never logs
    a step twice (``logged``: the steps its run already holds)."""

    def __init__(self, client: MlflowClient, run_id: str, samples: int, logged: Iterable[int] = ()):
        super().__init__()
        self.client, self.run_id, self.samples = client, run_id, samples
        self.logged = set(logged)  # steps the run has already (a resumed run's): not logged again
        self.history: list[dict[str, float]] = []
        self.log_seconds = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-epoch-log")
        self._pending: list[Future] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics.update(epoch_seconds=seconds, samples_per_second=self.samples / seconds)
        self.history.append(metrics)
        number = epoch + 1  # Keras' index -> the epoch's number (step)
        self._submit(metrics, number)
        if not math.isfinite(metrics.get("loss", 0.0)):
            self.close()
            raise TrainingDiverged(f"loss is {metrics['loss']} after epoch {number}: training diverged"
                                   " (lower optimizer.lr)")

    def replay(self, history: list[dict[str, float]]) -> None:
        """A resumed run's earlier epochs: its history, and to MLflow the steps the run lacks (all
        of them in a retried trial's new run; none, or the last few an interruption lost before they
        were sent, in the run it continues)."""
        self.history = [dict(m) for m in history]
        for step, metrics in enumerate(self.history, start=1):
            self._submit(metrics, step)

    def tag(self, key: str, value: str) -> None:
        """A tag on the run, set in the background thread like the metrics (its failure surfaces in
        ``close``)."""
        self._pending.append(self._pool.submit(self.client.set_tag, self.run_id, key, value))

    def _submit(self, metrics: dict[str, float], step: int) -> None:
        if step in self.logged:  # a resumed run recomputes an epoch the interruption had logged:
            return  # the same values (deterministic), logged once
        self.logged.add(step)
        self._pending.append(self._pool.submit(self._log, metrics, step))

    def _log(self, metrics: dict[str, float], step: int) -> None:
        start = time.perf_counter()
        tracking.log_metrics(self.client, self.run_id, metrics, step=step)
        self.log_seconds += time.perf_counter() - start

    def close(self, quiet: bool = False) -> None:
        """Wait for every pending MLflow call; re-raise the first failure unless ``quiet``."""
        pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]
        self._pool.shutdown(wait=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-epoch-log")
        first = next((e for e in errors if e is not None), None)
        if first is not None and not quiet:
            raise first


def log_figures(client: MlflowClient, run_id: str, predict_classes: Callable[[np.ndarray], np.ndarray],
                splits: data.Splits, history: list[dict[str, float]]) -> None:
    """Artifacts ``figures/`` (curves, confusion matrix, misclassified images) and metrics
    ``test_accuracy_<class>``, from one prediction pass over the test set. Pictures never fail a run."""
    start = time.perf_counter()
    try:
        from lenet_sweep.training import figures

        y_pred = predict_classes(splits.x_test)
        with tempfile.TemporaryDirectory() as tmp:
            per_class = figures.write_run_figures(Path(tmp), history, splits.y_test, y_pred,
                                                  splits.x_test, splits.class_names)
            client.log_artifacts(run_id, tmp, "figures")
        metrics = {f"test_accuracy_{figures.slug(k)}": v for k, v in per_class.items()}
        metrics["figures_seconds"] = time.perf_counter() - start
        tracking.log_metrics(client, run_id, metrics, step=len(history))
    except Exception as exc:  # a picture is not worth a failed run; a full disk fails the next write
        if tracking.write_error(exc):  # anyway: one error line, not a warning first
            raise
        log.warning("run figures not written: %s: %s", type(exc).__name__, exc)


def record_start(client: MlflowClient, run_id: str, cfg: DictConfig, model: keras.Model,
                 splits: data.Splits, summary: str, later: tuple[str, ...] = ()) -> None:
    """What a run records before training: params, provenance, the model table, the config.
    ``later``: params known only once training starts (a shared-batches trial's
    ``trainer.stream_position``), logged then with :func:`record_param`."""
    params = {k: v for k, v in tracking.flat_params(cfg).items() if k not in later}
    tracking.log_params(client, run_id, {**params, "num_params": model.count_params(),
                                         "precision": precision(model)})
    provenance.log_run(client, run_id, cfg, model, splits)  # versions, commit, threads, data
    client.log_text(run_id, summary, "model_summary.txt")
    log_config(client, run_id, cfg)


def precision(model: keras.Model) -> str:
    """The Keras dtype policies the model's weighted layers compute under: ``float32`` for the models
    shipped here; ``mixed_bfloat16`` for a ``model._target_`` that builds its layers so (bf16 does not
    pay on the CPUs measured: docs/benchmarks.md)."""
    names = sorted({layer.dtype_policy.name for layer in model.layers if layer.weights})
    return ",".join(names) or model.dtype_policy.name


def log_config(client: MlflowClient, run_id: str, cfg: DictConfig) -> None:
    """The resolved config as the run's ``config.yaml`` (what a rerun trains)."""
    client.log_text(run_id, tracking.redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")


def record_param(client: MlflowClient, run_id: str, cfg: DictConfig, key: str, value) -> None:
    """Set ``key`` in ``cfg``, log it as a param and ``config.yaml`` again (a key ``record_start``
    left for later)."""
    OmegaConf.update(cfg, key, value)
    tracking.log_params(client, run_id, {key: value})
    log_config(client, run_id, cfg)


def record_end(client: MlflowClient, run_id: str, model: keras.Model, splits: data.Splits,
               history: list[dict[str, float]], test: dict[str, float],
               predict_classes: Callable[[np.ndarray], np.ndarray], *, xla: bool, stopped: bool,
               output_dir: Path | None) -> dict[str, float]:
    """What a run records after training: the XLA choice, test metrics, pictures (not for a run
    stopped early: a pruned trial), the weights and Hydra's ``.hydra/`` files. Returns the final
    epoch's metrics plus ``test_loss``, ``test_accuracy``, ``train_seconds`` (its epochs' seconds)
    and ``num_params``: what an ``objective`` may name."""
    client.set_tag(run_id, "xla", str(xla).lower())  # the choice trainer.jit_compile=null made
    metrics = {**history[-1], **{f"test_{k}": float(v) for k, v in test.items()},
               "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in history),
               "num_params": float(model.count_params())}
    tracking.log_metrics(client, run_id, {k: metrics[k] for k in ("test_loss", "test_accuracy", "train_seconds",
                                                                  "num_params")},
                         step=len(history))  # at the last epoch's step
    if stopped:
        log.info("training stopped early: figures/ not written")
    else:
        log_figures(client, run_id, predict_classes, splits, history)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "lenet.weights.h5"
        model.save_weights(weights)
        client.log_artifact(run_id, str(weights))
    if output_dir is not None and (output_dir / ".hydra").is_dir():
        tracking.log_redacted_dir(client, run_id, output_dir / ".hydra", ".hydra")
    return metrics


class RunRecord:
    """One run's record: ``client``/``run_id`` (RUNNING), its ``cfg``, ``samples`` training images
    per epoch (throughput), its ``phases``; ``logged``: steps the run already holds (a resumed run);
    ``checkpoints``: the folders whose resume point goes when the run ends for good (completed,
    pruned, diverged; an interruption or a crash keeps it, to resume from)."""

    def __init__(self, client: MlflowClient, run_id: str, cfg: DictConfig, samples: int,
                 phases: runtime.Phases, logged: Iterable[int] = (), checkpoints: Iterable = ()):
        self.client, self.run_id, self.cfg, self.phases = client, run_id, cfg, phases
        self.logger = EpochLogger(client, run_id, samples, logged)
        self.checkpoints = [c for c in checkpoints if c]
        self.checkpoint_seconds = 0.0  # writing its resume points (logged when it finishes)
        self.ended = False

    @property
    def history(self) -> list[dict[str, float]]:
        return self.logger.history

    def start(self, model: keras.Model, splits: data.Splits, summary: str, later: tuple[str, ...] = ()) -> None:
        record_start(self.client, self.run_id, self.cfg, model, splits, summary, later)

    def param(self, key: str, value) -> None:
        """A param :meth:`start` left for ``later``."""
        record_param(self.client, self.run_id, self.cfg, key, value)

    def finish(self, model: keras.Model, splits: data.Splits, test: dict[str, float],
               predict_classes: Callable[[np.ndarray], np.ndarray], *, xla: bool, stopped: bool,
               output_dir: Path | None) -> dict[str, float]:
        """Record the end (:func:`record_end`), the phases, end the run FINISHED, remove the resume
        point, register the model if ``mlflow.register`` asks. Returns what ``record_end`` returns."""
        self.logger.close()
        metrics = record_end(self.client, self.run_id, model, splits, self.history, test, predict_classes,
                             xla=xla, stopped=stopped, output_dir=output_dir)
        step = len(self.history)  # the last epoch's
        if self.checkpoint_seconds:
            tracking.log_metrics(self.client, self.run_id, {"checkpoint_seconds": self.checkpoint_seconds},
                                 step=step)
        self.phases.log(self.client, self.run_id, step)
        tracking.end_run(self.client, self.run_id)
        self.ended = True
        self.discard_checkpoints()
        registry.register_if_asked(self.client, self.run_id, self.cfg)  # never fails the run
        return metrics

    def fail(self, exc: BaseException) -> None:
        """End the run as ``exc`` says: KILLED (Ctrl-C, SIGTERM) or FAILED (``error`` tag,
        ``error.txt``), with the phases it went through; a diverged or pruned run's resume point
        goes. Nothing if it has ended (a pruned trial's run ends FINISHED when recorded). Never
        raises: the caller's own error matters more (the sweeper closes a run this could not)."""
        import optuna

        if self.ended:
            return
        self.ended = True
        self.logger.close(quiet=True)  # no epoch metric may land after the run's status
        if isinstance(exc, (optuna.TrialPruned, UserError)):  # a diverged loss would diverge again
            self.discard_checkpoints()
        try:
            self.phases.log(self.client, self.run_id, len(self.history), quiet=True)
            tracking.end_run(self.client, self.run_id, exc)
        except Exception:  # noqa: BLE001
            pass

    def discard_checkpoints(self) -> None:
        if not self.cfg.trainer.keep_checkpoint:
            for where in self.checkpoints:
                checkpoint.remove(where)
