"""train(cfg) -> metrics: data, model, fit with callbacks, evaluate, everything recorded to MLflow
(lenet_sweep.training.record); a checkpoint at each epoch end, and resuming from one (lenet_sweep.training.checkpoint)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from lenet_sweep.quiet import import_tensorflow

_IMPORT_STARTED = time.time()  # a worker's first trial imports TensorFlow here: its setup, not its wait
import_tensorflow()  # first: TensorFlow's C++ start-up lines filtered (lenet_sweep.quiet)
import keras  # noqa: E402
import numpy as np
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lenet_sweep import builders, data, devices, tracking
from lenet_sweep.config import ConfigError, validate
from lenet_sweep.model import format_shape_table
from lenet_sweep.quiet import startup_lines_filtered
from lenet_sweep.training import checkpoint, runtime
from lenet_sweep.training.record import RunRecord

if TYPE_CHECKING:
    from lenet_sweep.trial import Job

log = logging.getLogger(__name__)
_IMPORT = {"span": (_IMPORT_STARTED, time.time())}  # popped by the first run of this process


def _import_seconds(written_at: float | None) -> float:
    """This module's import (TensorFlow's) if this is the process's first run and it happened after
    ``written_at`` (the trial's payload), else 0: counted once, in the first run's setup."""
    span = _IMPORT.pop("span", None)
    if span is None:
        return 0.0
    started, ended = span
    return max(0.0, ended - max(started, written_at or started))


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


#: iterators Keras ``fit`` makes of a dataset of known length per epoch (Keras 3's EpochIterator: one
#: as the epoch starts, one as it ends); each draws the shuffle's next seed (``reshuffle_each_iteration``)
KERAS_ITERATORS_PER_EPOCH = 2


def _fit_and_test(model: keras.Model, cfg: DictConfig, splits: data.Splits, callbacks, resume=None,
                  after_epoch=None, phases: runtime.Phases | None = None,
                  ) -> tuple[dict[str, float], Callable[[np.ndarray], np.ndarray], bool]:
    """Train as ``cfg.trainer`` says, then evaluate on the test set: the in-graph loop over tensors
    (``trainer.fast=true``, :mod:`lenet_sweep.model.fast_fit`) or Keras ``fit`` on tf.data.

    ``resume`` (a :class:`~lenet_sweep.model.fast_fit.LoopState`, the variables already restored):
    continue after its epochs; ``after_epoch(LoopState)`` at every epoch end that training goes on
    from (the checkpoint).

    ``phases`` (in ``setup``): enters ``train``, ``evaluate`` and ``record`` here.

    Returns the test metrics, a function giving the predicted class of each image, and whether the
    training step was compiled by XLA (``trainer.jit_compile=null``: the fast path measures)."""
    tc = cfg.trainer
    enter = phases.enter if phases is not None else (lambda name: 0.0)
    if tc.fast:
        from lenet_sweep.model import fast_fit

        t = runtime.tensors(splits)
        order_seed = cfg.seed if tc.stream_seed is None else tc.stream_seed  # batch orders' generator
        enter("train")
        _, trainer = fast_fit.fit(model, t.x_train, t.y_train, batch_size=cfg.data.batch_size,
                                  epochs=tc.epochs, seed=order_seed, skip=tc.stream_position or 0, validation_data=(t.x_val, t.y_val),
                                  callbacks=callbacks, verbose=tc.verbose,
                                  steps_per_execution=tc.steps_per_execution, jit_compile=tc.jit_compile,
                                  resume=resume, after_epoch=after_epoch)
        enter("evaluate")
        test = trainer.evaluate(t.x_test, t.y_test)
        enter("record")
        return test, trainer.predict_classes, trainer.jit_compile
    train_ds, val_ds, test_ds = data.to_datasets(splits, cfg.data.batch_size, cfg.seed)
    initial_epoch = resume.epoch if resume is not None else 0
    for _ in range(initial_epoch * KERAS_ITERATORS_PER_EPOCH):  # each iterator made draws the next
        iter(train_ds)  # shuffle seed: the resumed epoch k reads the order the uninterrupted one read
    if after_epoch is not None:
        callbacks = [*callbacks, EpochCheckpoint(after_epoch)]
    enter("train")
    if initial_epoch < tc.epochs:
        model.fit(train_ds, validation_data=val_ds, epochs=tc.epochs, callbacks=callbacks,
                  verbose=tc.verbose, shuffle=False,  # the tf.data pipeline reshuffles every epoch
                  initial_epoch=initial_epoch)
    enter("evaluate")
    test = model.evaluate(test_ds, return_dict=True, verbose=0)
    enter("record")
    return ({k: float(v) for k, v in test.items()},
            lambda x: model.predict(x, batch_size=1024, verbose=0).argmax(axis=-1), bool(tc.jit_compile))


class PruningCallback(keras.callbacks.Callback):
    """Hands each epoch's ``monitor`` value to ``report(epoch, value)`` (``epoch`` counted from 1: the
    Optuna step) and stops training at the end of the epoch when it answers True (a sweep's pruner:
    :class:`lenet_sweep.trial.Reporter`).
    Stopping, not raising inside ``fit``: the run still evaluates and records everything."""

    def __init__(self, report: Callable[[int, float], bool], monitor: str):
        super().__init__()
        self.report, self.monitor = report, monitor

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and self.report(epoch + 1, float(value)):  # Keras' index -> number
            self.model.stop_training = True

    def replay(self, history: list[dict[str, float]]) -> None:
        """A retried trial's epochs of its failed attempt: reported to its (new) Optuna trial, so
        the pruner sees the whole curve, without asking the pruner (it judges the first epoch this
        attempt trains, as it would have judged that epoch uninterrupted). ``report`` takes ``ask``
        (:meth:`lenet_sweep.trial.Reporter.report`)."""
        for epoch, logs in enumerate(history, start=1):
            if logs.get(self.monitor) is not None:
                self.report(epoch, float(logs[self.monitor]), ask=False)


class EpochCheckpoint(keras.callbacks.Callback):
    """Keras ``fit`` (``trainer.fast=false``): ``save(LoopState)`` at every epoch end, after the
    callbacks before it (put it last), unless training stops there."""

    def __init__(self, save: Callable):
        super().__init__()
        self.save = save

    def on_epoch_end(self, epoch, logs=None):
        if not self.model.stop_training:
            from lenet_sweep.model.fast_fit import LoopState

            self.save(LoopState(epoch + 1))


def _resume_source(cfg: DictConfig, job: Job, resume_from: str | None) -> tuple[str | None, bool]:
    """Where this run resumes from, and whether the user named it (``trainer.resume``: a missing
    checkpoint is an error) or a sweeper did (a retried trial: its failed attempt may have died
    before its first epoch end, and then the trial starts afresh)."""
    if resume_from is not None:
        return str(resume_from), False
    if cfg.trainer.resume and job.multirun:
        raise ConfigError(f"trainer.resume={cfg.trainer.resume} continues one run, not a sweep's trials "
                          "(a sweep's retried trial resumes from its failed attempt by itself)")
    if job.payload is not None and job.payload.resume_from:
        return job.payload.resume_from, False
    if cfg.trainer.resume:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import to_absolute_path

        path = str(Path(cfg.trainer.resume).expanduser())
        return (to_absolute_path(path) if HydraConfig.initialized() else str(Path(path).resolve())), True
    return None, False


def _load_checkpoint(source: str, named: bool, cfg: DictConfig) -> checkpoint.Checkpoint | None:
    if not named:  # a retried trial
        return checkpoint.for_retry(source, cfg)
    ckpt = checkpoint.read(source)
    if ckpt is None:
        raise ConfigError(f"trainer.resume={source}: no {checkpoint.FILE} there (a run keeps one in "
                          "its job folder while it trains and removes it when it ends; give the "
                          "interrupted run's folder, as Hydra printed it)")
    checkpoint.check(ckpt, cfg, source, named)
    return ckpt


def _reopen(client: MlflowClient, run_id: str, source: str) -> None:
    """The interrupted run (KILLED, FAILED, or still RUNNING after a kill) runs again."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        run = None
    if run is None or run.info.lifecycle_stage != "active":
        raise ConfigError(f"trainer.resume={source}: its MLflow run {run_id} is not in this tracking "
                          f"store ({tracking.mask_url(client.tracking_uri)}): resume with the "
                          "mlflow.tracking_uri the run was logged to")
    client.update_run(run_id, status="RUNNING")
    if "error" in run.data.tags:
        client.delete_tag(run_id, "error")


def _saver(folder: Path, model: keras.Model, record: RunRecord, config: dict[str, str]) -> Callable:
    """``save(LoopState)``: the run's checkpoint into ``folder`` (its time: ``record.checkpoint_seconds``)."""
    def save(loop) -> None:
        start = time.perf_counter()
        weights, optimizer = checkpoint.model_state(model)
        checkpoint.Checkpoint(loop.epoch, weights, optimizer, record.history, config, record.run_id,
                              loop.rng, loop.jit).write(folder)
        record.checkpoint_seconds += time.perf_counter() - start

    return save


def train(cfg: DictConfig, callbacks: Sequence[keras.callbacks.Callback] = (),
          run_id: str | None = None, resume_from: str | None = None, job: Job | None = None) -> dict[str, float]:
    """Train and evaluate one configuration; every param, metric and artifact goes to MLflow, into
    a new run or into ``run_id`` (a sweep trial's child run, created by the sweeper).

    At each epoch end the run's checkpoint goes to its job folder (``trainer.checkpoint*``,
    :mod:`lenet_sweep.training.checkpoint`). ``trainer.resume=<job folder>`` continues an interrupted run in
    its own MLflow run; ``resume_from`` (or a sweep trial's ``TrialPayload.resume_from``) continues a
    failed attempt's checkpoint in ``run_id``, whose run gets the earlier epochs first (as do the
    callbacks with a ``replay(history)`` method: :class:`PruningCallback` reports them to Optuna).

    The run's phases (``phase.*_seconds``, :mod:`lenet_sweep.training.runtime`) are logged before it ends.

    ``job``: what this run is (:class:`lenet_sweep.trial.Job`; None: read from Hydra here).

    Returns what :func:`lenet_sweep.training.record.record_end` returns.
    """
    started = time.time()
    phases = runtime.Phases()
    validate(cfg)
    if job is None:  # (imported here: a run outside a sweep loads nothing of the sweep protocol)
        from lenet_sweep.trial import Job

        job = Job.from_hydra()
    if cfg.trainer.verbose is None:  # null: Keras' progress for a single run, silence in a sweep's trial
        cfg.trainer.verbose = 0 if job.multirun else 1  # (the sweep prints a line per trial)
    splits = runtime.splits(cfg.data)  # missing/corrupt data fails here, before any MLflow run exists
    tc = cfg.trainer
    output_dir = job.output_dir
    written_at = job.payload.written_at if job.payload is not None else None
    imported = _import_seconds(written_at)
    phases.add("setup", imported)
    wait = runtime.waited(written_at, started, busy=imported)
    if wait is not None:
        phases.add("wait_slot", wait)
    source, named = _resume_source(cfg, job, resume_from)
    ckpt = _load_checkpoint(source, named, cfg) if source else None  # also before any run exists
    with startup_lines_filtered():  # the first device query prints CUDA start-up lines
        device = devices.configure()
    keras.utils.set_random_seed(cfg.seed)
    model = builders.build_model(cfg.model, splits.x_train.shape[1:])  # model._target_
    steps = -(-len(splits.x_train) // cfg.data.batch_size)  # no more than an epoch per call
    model.compile(optimizer=make_optimizer(cfg.optimizer),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=bool(tc.jit_compile), steps_per_execution=min(tc.steps_per_execution, steps))
    summary = format_shape_table(model)
    if tc.verbose:
        log.info("the model, layer by layer:\n%s", summary)

    client = runtime.client(cfg.mlflow)
    continues = ckpt is not None and run_id is None and ckpt.run_id is not None  # its own run again
    tags = {"hydra.overrides": tracking.redact(job.overrides), "device": device}
    if continues:
        run_id = ckpt.run_id
        _reopen(client, run_id, source)
        tags = {}  # the run keeps what it recorded when it started
    if ckpt is not None:
        tags.update({"resumed_from": tracking.redact(source), "resumed_after_epoch": str(ckpt.epoch)})
    folder = None
    if tc.checkpoint:
        folder = Path(tc.checkpoint_dir).expanduser() if tc.checkpoint_dir else output_dir
    with tracking.sigterm_as_exit():
        run_id = tracking.create_run(client, cfg.mlflow.experiment_name, run_id, cfg.mlflow.run_name, tags)
        logged = {m.step for m in client.get_metric_history(run_id, "epoch_seconds")} if continues else ()
        record = RunRecord(client, run_id, cfg, len(splits.x_train), phases, logged, checkpoints=(folder, source))
        try:
            if not continues:
                record.start(model, splits, summary)
            save = _saver(folder, model, record, checkpoint.fingerprint(cfg)) if folder else None
            loop = None
            if ckpt is not None:
                from lenet_sweep.model.fast_fit import LoopState

                checkpoint.restore_model(model, ckpt)
                loop = LoopState(ckpt.epoch, ckpt.rng, ckpt.jit)
                record.logger.replay(ckpt.history)
                for callback in callbacks:
                    getattr(callback, "replay", lambda history: None)(ckpt.history)
                if save is not None:  # this job's folder holds the newest resume point from now on
                    save(loop)
            test, predict_classes, xla = _fit_and_test(model, cfg, splits, [record.logger, *callbacks], loop,
                                                       save, phases)
            metrics = record.finish(model, splits, test, predict_classes, xla=xla, stopped=model.stop_training,
                                    output_dir=output_dir)
        except BaseException as exc:  # interrupted (Ctrl-C, SIGTERM: KILLED, the checkpoint stays, to
            record.fail(exc)  # resume from), crashed (FAILED, it stays) or diverged (FAILED, it goes)
            raise
    if not job.multirun:  # a sweep prints one line per trial itself
        log.info(f"test_accuracy={metrics['test_accuracy']:.4f} test_loss={metrics['test_loss']:.4f} "
                 f"mlflow_run_id={run_id}")
    return metrics
