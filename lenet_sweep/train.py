"""train(cfg) -> metrics: data, model, fit with callbacks, evaluate, log everything to MLflow."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Sequence

import keras
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lenet_sweep import data, devices, tracking
from lenet_sweep.config import UserError, validate
from lenet_sweep.model import build_lenet, format_shape_table


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; training stopped at that epoch."""


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics to MLflow (step = epoch), with epoch time and throughput; stops on NaN."""

    def __init__(self, client: MlflowClient, run_id: str, samples: int):
        super().__init__()
        self.client, self.run_id, self.samples = client, run_id, samples
        self.history: list[dict[str, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics.update(epoch_seconds=seconds, samples_per_second=self.samples / seconds)
        self.history.append(metrics)
        tracking.log_metrics(self.client, self.run_id, metrics, step=epoch)
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise TrainingDiverged(f"loss is {metrics['loss']} after epoch {epoch}: training diverged"
                                   " (lower optimizer.lr)")


def make_optimizer(opt_cfg) -> keras.optimizers.Optimizer:
    if opt_cfg.name == "sgd":
        return keras.optimizers.SGD(learning_rate=opt_cfg.lr, momentum=opt_cfg.momentum,
                                    nesterov=opt_cfg.nesterov)
    if opt_cfg.name == "adam":
        return keras.optimizers.Adam(learning_rate=opt_cfg.lr, beta_1=opt_cfg.beta_1,
                                     beta_2=opt_cfg.beta_2, epsilon=opt_cfg.epsilon)
    raise ValueError(f"optimizer.name={opt_cfg.name} is unknown: use optimizer=sgd or optimizer=adam")


def log_figures(client: MlflowClient, run_id: str, model, test_ds, splits: data.Splits,
                history: list[dict[str, float]]) -> None:
    """Artifacts ``figures/`` (curves, confusion matrix, misclassified images) and metrics
    ``test_accuracy_<class>``, from one prediction pass over the test set. Pictures never fail a run."""
    start = time.perf_counter()
    try:
        from lenet_sweep import figures

        y_pred = model.predict(test_ds, verbose=0).argmax(axis=-1)
        with tempfile.TemporaryDirectory() as tmp:
            per_class = figures.write_run_figures(Path(tmp), history, splits.y_test, y_pred,
                                                  splits.x_test)
            client.log_artifacts(run_id, tmp, "figures")
        metrics = {f"test_accuracy_{figures.slug(k)}": v for k, v in per_class.items()}
        metrics["figures_seconds"] = time.perf_counter() - start
        tracking.log_metrics(client, run_id, metrics, step=len(history) - 1)
    except Exception as exc:  # a picture is not worth a failed run
        print(f"warning: run figures not written: {type(exc).__name__}: {exc}")


def _hydra_dir() -> tuple[Path | None, str]:
    """Hydra's output folder and the overrides of this job, when run under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, ""
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), " ".join(hc.overrides.task)


def train(cfg: DictConfig, callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict[str, float]:
    """Train and evaluate one configuration; every param, metric and artifact goes to MLflow.

    Returns the final epoch's metrics plus ``test_loss`` and ``test_accuracy``.
    """
    validate(cfg)
    splits = data.load(cfg.data)  # missing/corrupt data fails here, before any MLflow run exists
    device = devices.configure()
    keras.utils.set_random_seed(cfg.seed)
    train_ds, val_ds, test_ds = data.to_datasets(splits, cfg.data.batch_size, cfg.seed)
    model = build_lenet(cfg.model)
    model.compile(optimizer=make_optimizer(cfg.optimizer),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    summary = format_shape_table(model)
    print(summary)

    client = MlflowClient(tracking.tracking_uri(cfg.mlflow))
    output_dir, overrides = _hydra_dir()
    tags = {"hydra.overrides": overrides, "device": device}
    with tracking.open_run(client, cfg.mlflow.experiment_name, cfg.mlflow.run_id,
                           cfg.mlflow.run_name, tags) as run_id:
        tracking.log_params(client, run_id, {**tracking.flat_params(cfg),
                                             "num_params": model.count_params()})
        client.log_text(run_id, summary, "model_summary.txt")
        client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        logger = EpochLogger(client, run_id, len(splits.x_train))
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.trainer.epochs,
                  callbacks=[logger, *callbacks], verbose=cfg.trainer.verbose,
                  shuffle=False)  # the tf.data pipeline reshuffles every epoch
        test = model.evaluate(test_ds, return_dict=True, verbose=0)
        metrics = {**logger.history[-1], **{f"test_{k}": float(v) for k, v in test.items()}}
        tracking.log_metrics(client, run_id, {k: metrics[k] for k in ("test_loss", "test_accuracy")},
                             step=len(logger.history) - 1)
        log_figures(client, run_id, model, test_ds, splits, logger.history)
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "lenet.weights.h5"
            model.save_weights(weights)
            client.log_artifact(run_id, str(weights))
        if output_dir is not None and (output_dir / ".hydra").is_dir():
            client.log_artifacts(run_id, str(output_dir / ".hydra"), ".hydra")
    print(f"test_accuracy={metrics['test_accuracy']:.4f} test_loss={metrics['test_loss']:.4f} "
          f"mlflow_run_id={run_id}")
    return metrics
