"""train(cfg) -> metrics: data, model, fit with callbacks, evaluate, log everything to MLflow."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from lenet_sweep.quiet import import_tensorflow

import_tensorflow()  # first: TensorFlow's C++ start-up lines filtered (lenet_sweep.quiet)
import keras  # noqa: E402
import numpy as np
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lenet_sweep import data, devices, provenance, registry, tracking
from lenet_sweep.config import ConfigError, TrainingDiverged, validate
from lenet_sweep.model import build_lenet, format_shape_table
from lenet_sweep.quiet import startup_lines_filtered

log = logging.getLogger(__name__)


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics to MLflow (step = epoch), with epoch time and throughput; stops on NaN.

    The MLflow call runs in a background thread, off the training loop's path; ``close`` waits for
    it (``train`` calls it before anything else goes to the run). ``log_seconds`` is the time spent
    in those calls."""

    def __init__(self, client: MlflowClient, run_id: str, samples: int):
        super().__init__()
        self.client, self.run_id, self.samples = client, run_id, samples
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
        self._pending.append(self._pool.submit(self._log, metrics, epoch))
        if not math.isfinite(metrics.get("loss", 0.0)):
            self.close()
            raise TrainingDiverged(f"loss is {metrics['loss']} after epoch {epoch}: training diverged"
                                   " (lower optimizer.lr)")

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


def make_optimizer(opt_cfg: DictConfig) -> keras.optimizers.Optimizer:
    """Hydra instantiates the optimizer group's ``_target_`` (a Keras optimizer class) with the group's
    keys as keywords; the user-facing ``lr`` (the notebook's name) is Keras' ``learning_rate``. A group
    the user adds works the same way (``conf/optimizer/rmsprop.yaml``: ``_target_:
    keras.optimizers.RMSprop``, ``name``, ``lr``, ``rho``); a key the class does not take is a
    ConfigError naming ``optimizer._target_``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    kwargs = OmegaConf.to_container(opt_cfg, resolve=True)
    kwargs["learning_rate"] = kwargs.pop("lr")
    try:
        return instantiate(kwargs)
    except InstantiationException as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"optimizer._target_={kwargs.get('_target_')} cannot be built from the "
                          f"optimizer group's keys: {reason}") from None


def log_figures(client: MlflowClient, run_id: str, predict_classes: Callable[[np.ndarray], np.ndarray],
                splits: data.Splits, history: list[dict[str, float]]) -> None:
    """Artifacts ``figures/`` (curves, confusion matrix, misclassified images) and metrics
    ``test_accuracy_<class>``, from one prediction pass over the test set. Pictures never fail a run."""
    start = time.perf_counter()
    try:
        from lenet_sweep import figures

        y_pred = predict_classes(splits.x_test)
        with tempfile.TemporaryDirectory() as tmp:
            per_class = figures.write_run_figures(Path(tmp), history, splits.y_test, y_pred,
                                                  splits.x_test)
            client.log_artifacts(run_id, tmp, "figures")
        metrics = {f"test_accuracy_{figures.slug(k)}": v for k, v in per_class.items()}
        metrics["figures_seconds"] = time.perf_counter() - start
        tracking.log_metrics(client, run_id, metrics, step=len(history) - 1)
    except Exception as exc:  # a picture is not worth a failed run
        log.warning("run figures not written: %s: %s", type(exc).__name__, exc)


def record_start(client: MlflowClient, run_id: str, cfg: DictConfig, model: keras.Model,
                 splits: data.Splits, summary: str) -> None:
    """What a run records before training: params, provenance, the model table, the config."""
    tracking.log_params(client, run_id, {**tracking.flat_params(cfg), "num_params": model.count_params()})
    provenance.log_run(client, run_id, cfg, model, splits)  # versions, commit, threads, data
    client.log_text(run_id, summary, "model_summary.txt")
    client.log_text(run_id, tracking.redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")


def record_end(client: MlflowClient, run_id: str, model: keras.Model, splits: data.Splits,
               history: list[dict[str, float]], test: dict[str, float],
               predict_classes: Callable[[np.ndarray], np.ndarray], *, xla: bool, stopped: bool,
               output_dir: Path | None) -> dict[str, float]:
    """What a run records after training: the XLA choice, test metrics, pictures (not for a run
    stopped early: a pruned trial), the weights and Hydra's ``.hydra/`` files. Returns the final
    epoch's metrics plus ``test_loss`` and ``test_accuracy``."""
    client.set_tag(run_id, "xla", str(xla).lower())  # the choice trainer.jit_compile=null made
    metrics = {**history[-1], **{f"test_{k}": float(v) for k, v in test.items()}}
    tracking.log_metrics(client, run_id, {k: metrics[k] for k in ("test_loss", "test_accuracy")},
                         step=len(history) - 1)
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


def _fit_and_test(model: keras.Model, cfg: DictConfig, splits: data.Splits,
                  callbacks) -> tuple[dict[str, float], Callable[[np.ndarray], np.ndarray], bool]:
    """Train as ``cfg.trainer`` says, then evaluate on the test set: the in-graph loop over tensors
    (``trainer.fast=true``, :mod:`lenet_sweep.fast_fit`) or Keras ``fit`` on tf.data.

    Returns the test metrics, a function giving the predicted class of each image, and whether the
    training step was compiled by XLA (``trainer.jit_compile=null``: the fast path measures)."""
    tc = cfg.trainer
    if tc.fast:
        from lenet_sweep import fast_fit

        t = data.to_tensors(splits)
        _, trainer = fast_fit.fit(model, t.x_train, t.y_train, batch_size=cfg.data.batch_size,
                                  epochs=tc.epochs, seed=cfg.seed, validation_data=(t.x_val, t.y_val),
                                  callbacks=callbacks, verbose=tc.verbose,
                                  steps_per_execution=tc.steps_per_execution, jit_compile=tc.jit_compile)
        return trainer.evaluate(t.x_test, t.y_test), trainer.predict_classes, trainer.jit_compile
    train_ds, val_ds, test_ds = data.to_datasets(splits, cfg.data.batch_size, cfg.seed)
    model.fit(train_ds, validation_data=val_ds, epochs=tc.epochs, callbacks=callbacks,
              verbose=tc.verbose, shuffle=False)  # the tf.data pipeline reshuffles every epoch
    test = model.evaluate(test_ds, return_dict=True, verbose=0)
    return ({k: float(v) for k, v in test.items()},
            lambda x: model.predict(x, batch_size=1024, verbose=0).argmax(axis=-1), bool(tc.jit_compile))


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _hydra_dir() -> tuple[Path | None, str]:
    """Hydra's output folder and the overrides of this job, when run under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, ""
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), " ".join(hc.overrides.task)


class PruningCallback(keras.callbacks.Callback):
    """Hands each epoch's ``monitor`` value to ``report(epoch, value)`` and stops training at the end
    of the epoch when it answers True (a sweep's pruner: :class:`lenet_sweep.trial.Reporter`).
    Stopping, not raising inside ``fit``: the run still evaluates and records everything."""

    def __init__(self, report: Callable[[int, float], bool], monitor: str):
        super().__init__()
        self.report, self.monitor = report, monitor

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and self.report(epoch, float(value)):
            self.model.stop_training = True


def train(cfg: DictConfig, callbacks: Sequence[keras.callbacks.Callback] = (),
          run_id: str | None = None) -> dict[str, float]:
    """Train and evaluate one configuration; every param, metric and artifact goes to MLflow, into
    a new run or into ``run_id`` (a sweep trial's child run, created by the sweeper).

    Returns the final epoch's metrics plus ``test_loss`` and ``test_accuracy``.
    """
    validate(cfg)
    splits = data.load(cfg.data)  # missing/corrupt data fails here, before any MLflow run exists
    with startup_lines_filtered():  # the first device query prints CUDA start-up lines
        device = devices.configure()
    keras.utils.set_random_seed(cfg.seed)
    tc = cfg.trainer
    model = build_lenet(cfg.model)
    steps = -(-len(splits.x_train) // cfg.data.batch_size)  # no more than an epoch per call
    model.compile(optimizer=make_optimizer(cfg.optimizer),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=bool(tc.jit_compile), steps_per_execution=min(tc.steps_per_execution, steps))
    summary = format_shape_table(model)
    if tc.verbose:
        log.info("the model, layer by layer:\n%s", summary)

    client = tracking.client_for(cfg.mlflow)
    output_dir, overrides = _hydra_dir()
    tags = {"hydra.overrides": tracking.redact(overrides), "device": device}
    with tracking.open_run(client, cfg.mlflow.experiment_name, run_id, cfg.mlflow.run_name,
                           tags) as run_id:
        record_start(client, run_id, cfg, model, splits, summary)
        logger = EpochLogger(client, run_id, len(splits.x_train))
        try:
            test, predict_classes, xla = _fit_and_test(model, cfg, splits, [logger, *callbacks])
        except BaseException:
            logger.close(quiet=True)  # the run's status is set next; no epoch metric may land after it
            raise
        logger.close()
        metrics = record_end(client, run_id, model, splits, logger.history, test, predict_classes,
                             xla=xla, stopped=model.stop_training, output_dir=output_dir)
    if not _in_sweep():  # a sweep prints one line per trial itself
        log.info(f"test_accuracy={metrics['test_accuracy']:.4f} test_loss={metrics['test_loss']:.4f} "
                 f"mlflow_run_id={run_id}")
    registry.register_if_asked(client, run_id, cfg)  # mlflow.register=true; never fails the run
    return metrics
