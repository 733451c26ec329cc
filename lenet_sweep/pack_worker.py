"""A sweep worker that hosts K trials at once (``hydra.launcher.pack=K``): one fused
:class:`~lenet_sweep.packed.PackedLeNet`, each slot refilled with the next trial at an epoch boundary.

Each trial arrives as the Hydra job it would be unpacked — its overrides, composed by Hydra's
``run_job`` (its folder, ``.hydra/`` files, and the sweeper's :class:`~lenet_sweep.trial.TrialPayload`
there) — and leaves as that job's ``JobReturn``. Its MLflow child run records what an unpacked
trial's records (:func:`lenet_sweep.train.record_start` / :func:`~lenet_sweep.train.record_end`:
params, provenance, per-epoch metrics, test metrics, pictures, ``.weights.h5``) plus a tag
``pack`` (``slot/size``); its Optuna trial gets each epoch's report and may be pruned.

At each pack epoch every training slot keeps its trial's checkpoint in the trial's folder
(:mod:`lenet_sweep.checkpoint`: the slot's weights, its SGD velocities laid out as Keras' SGD
momentums, its batch-order generator, the history), as an unpacked trial does. A retried trial
(``TrialPayload.resume_from``: its failed attempt's folder) enters its slot where that attempt's
checkpoint stood, packed or not: bit for bit the uninterrupted trial in a pack of the same size (a
slot's arithmetic does not depend on its place or neighbours), equal up to float rounding in another
size of pack or unpacked (other kernels).

Like :mod:`lenet_sweep.train`, this is the job side of the sweeper ↔ worker protocol
(:mod:`lenet_sweep.trial`): it does not import ``lenet_sweep.sweep``.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import run_job
from omegaconf import DictConfig, open_dict

from lenet_sweep import checkpoint, data, devices, tracking
from lenet_sweep.config import ConfigError, UserError, validate
from lenet_sweep.model import _name, format_shape_table
from lenet_sweep.packed import PackedLeNet, SlotParams
from lenet_sweep.packing import PACKED_KEYS, shared_part, unpackable
from lenet_sweep.trial import Reporter, TrialPayload

log = logging.getLogger(__name__)


@dataclass
class Trial:
    """A trial in a slot."""

    idx: int
    overrides: list[str]
    cfg: DictConfig
    output_dir: Path
    payload: TrialPayload
    reporter: Reporter
    client: Any
    run_id: str
    logger: Any  # lenet_sweep.train.EpochLogger
    epoch: int = 0
    stopped: bool = False
    folder: Path | None = None  # where its checkpoint goes (trainer.checkpoint*; None: none)
    source: str | None = None  # the failed attempt's folder it resumed from
    checkpoint_seconds: float = 0.0


class PackWorker:
    """The worker's loop: take ``(idx, overrides)`` from ``inbox`` (None: no more), train them packed,
    and hand each trial's end to ``emit(idx, overrides, value, exc)`` (its objective value, or the
    exception the job would have raised: ``optuna.TrialPruned`` for a pruned trial)."""

    def __init__(self, context: tuple, size: int, inbox, emit):
        self.hydra_context, self.config, _, singleton_state = context  # the task is trained here, packed
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals

        setup_globals()
        Singleton.set_state(singleton_state)
        self.size, self.inbox, self.emit = size, inbox, emit
        self.slots: list[Trial | None] = [None] * size
        self.pack: PackedLeNet | None = None
        self.shared: dict | None = None
        self.splits: data.Splits | None = None
        self.closed = False
        self.recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-record")
        self.recording: list[tuple[Trial, Future]] = []  # trials whose record is queued or running

    # -- trials in --------------------------------------------------------------------------------
    def _compose(self, overrides: list[str], idx: int) -> tuple[DictConfig, Path, str]:
        """The job's config, folder and task overrides, as Hydra's launchers make them (``.hydra/``
        written)."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        ret = run_job(hydra_context=self.hydra_context, task_function=lambda cfg: cfg, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
                      configure_logging=False)
        return (ret.return_value, Path(ret.hydra_cfg.hydra.runtime.output_dir),
                " ".join(ret.hydra_cfg.hydra.overrides.task))

    def _start(self, slot: int, idx: int, overrides: list[str]) -> None:
        from lenet_sweep.train import EpochLogger, record_start

        cfg, output_dir, task_overrides = self._compose(overrides, idx)
        validate(cfg)
        payload = TrialPayload.read(output_dir)
        if payload is None:
            raise RuntimeError(f"no {output_dir}/.trial.json: a packed worker runs sweep trials only")
        if cfg.trainer.resume:
            raise ConfigError(f"trainer.resume={cfg.trainer.resume} continues one run, not a sweep's trials "
                              "(a sweep's retried trial resumes from its failed attempt by itself)")
        why = unpackable(cfg)
        if why:
            raise ConfigError(f"this trial cannot be packed: {why}")
        if self.pack is None:
            self.splits = data.load(cfg.data)
            self.device = devices.configure()
            t = data.to_tensors(self.splits)
            self.shared = shared_part(cfg)
            self.pack = PackedLeNet(cfg.model, self.size, cfg.data.batch_size, t.x_train, t.y_train)
            self.tensors = t
        elif shared_part(cfg) != self.shared:
            raise ConfigError("this trial differs from its pack in more than "
                              f"{', '.join(PACKED_KEYS)}: run it with hydra.launcher.pack=1")
        params = SlotParams(lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum,
                            nesterov=cfg.optimizer.nesterov, activation=_name(cfg.model.activation))
        # a retried trial: its failed attempt's checkpoint, if it wrote one of this config
        ckpt = checkpoint.for_retry(payload.resume_from, cfg) if payload.resume_from else None
        reporter = Reporter(payload)
        model = self.pack.assign(slot, params, cfg.seed)  # its initial model: for the record
        client = tracking.client_for(cfg.mlflow)
        run_id = payload.run_id
        tags = {"hydra.overrides": tracking.redact(task_overrides), "device": self.device,
                "pack": f"{slot}/{self.size}"}
        if ckpt is not None:
            tags.update({"resumed_from": tracking.redact(payload.resume_from),
                         "resumed_at_epoch": str(ckpt.epoch)})
        tracking.log_params(client, run_id, {}, tags)
        try:
            record_start(client, run_id, cfg, model, self.splits, format_shape_table(model))
        except BaseException as exc:
            tracking.end_run(client, run_id, exc)
            raise
        logger = EpochLogger(client, run_id, len(self.splits.x_train))
        tc = cfg.trainer
        folder = None
        if tc.checkpoint:
            folder = Path(tc.checkpoint_dir).expanduser() if tc.checkpoint_dir else output_dir
        trial = Trial(idx, overrides, cfg, output_dir, payload, reporter, client, run_id, logger,
                      folder=folder, source=payload.resume_from)
        self.slots[slot] = trial
        if ckpt is not None:
            self._resume(slot, trial, ckpt)

    def _resume(self, slot: int, trial: Trial, ckpt: checkpoint.Checkpoint) -> None:
        """The slot continues its failed attempt: its state restored, the attempt's epochs logged to
        this trial's run and reported to its Optuna trial (without asking the pruner: it judges the
        first epoch trained here), its checkpoint carried into this trial's folder."""
        shapes = [tuple(w.shape[1:]) for w in self.pack.weights]
        self.pack.restore(slot, ckpt.epoch, ckpt.weights, checkpoint.sgd_velocities(ckpt, shapes), ckpt.rng)
        trial.epoch = ckpt.epoch
        trial.logger.replay(ckpt.history)
        for epoch, logs in enumerate(ckpt.history):
            value = logs.get(trial.payload.monitor)
            if value is not None and math.isfinite(value):
                trial.reporter.report(epoch, value, ask=False)
        self._checkpoint([slot])

    def _checkpoint(self, slots: list[int]) -> None:
        """The trials of ``slots`` keep their resume point in their folders (trainer.checkpoint)."""
        slots = [k for k in slots if self.slots[k] is not None and self.slots[k].folder is not None]
        if not slots:
            return
        start = time.perf_counter()
        states = self.pack.slot_states(slots)
        share = (time.perf_counter() - start) / len(slots)
        for k in slots:
            trial, (weights, velocities, rng) = self.slots[k], states[k]
            begin = time.perf_counter()
            opt = checkpoint.sgd_variables(trial.epoch * self.pack.steps, trial.cfg.optimizer.lr,
                                           trial.cfg.optimizer.momentum, velocities)
            checkpoint.Checkpoint(trial.epoch, weights, opt, trial.logger.history,
                                  checkpoint.fingerprint(trial.cfg), trial.run_id, rng).write(trial.folder)
            trial.checkpoint_seconds += share + time.perf_counter() - begin

    def _discard_checkpoints(self, trial: Trial) -> None:
        """The trial ended: no resume point stays (unless trainer.keep_checkpoint)."""
        if not trial.cfg.trainer.keep_checkpoint:
            for where in (trial.folder, trial.source):
                checkpoint.remove(where)

    def _take(self) -> None:
        """Fill free slots with the trials waiting in the inbox; block for one only while no slot
        trains. A freed slot does not wait for the sweeper's next trial (that would stall every slot
        of the pack): the trial enters at the first epoch boundary after it arrives."""
        while not self.closed and None in self.slots:
            try:
                msg = self.inbox.get_nowait() if any(self.slots) else self.inbox.get()
            except queue.Empty:
                return
            if msg is None:
                self.closed = True
                return
            idx, overrides = msg
            slot = self.slots.index(None)
            try:
                self._start(slot, idx, overrides)
            except Exception as exc:  # this trial fails; the pack goes on
                if self.slots[slot] is not None:  # failed while resuming: its run is open
                    self._fail(slot, exc)
                    continue
                if self.pack is not None:
                    self.pack.release(slot)
                log.warning("trial job %s failed before training: %s", idx, tracking.error_line(exc))
                self.emit(idx, overrides, None, exc)
                continue
            if self.slots[slot].epoch >= self.slots[slot].cfg.trainer.epochs:  # resumed after its last
                self._finish(slot)  # epoch (the attempt died recording): test and record only

    # -- an epoch -------------------------------------------------------------------------------
    def _epoch(self) -> None:
        for trial in filter(None, self.slots):
            trial.logger.on_epoch_begin(trial.epoch)
        spe = next(filter(None, self.slots)).cfg.trainer.steps_per_execution  # the same in a pack
        train = self.pack.train_epoch(spe)
        val, _ = self.pack.evaluate(self.tensors.x_val, self.tensors.y_val)
        done, going_on = [], []
        for slot, trial in enumerate(self.slots):
            if trial is None:
                continue
            logs = {**train[slot], **{f"val_{k}": v for k, v in val[slot].items()}}
            try:
                trial.logger.on_epoch_end(trial.epoch, logs)  # raises TrainingDiverged on NaN
                value = logs.get(trial.payload.monitor)
                if value is not None and math.isfinite(value) and trial.reporter.report(trial.epoch, value):
                    trial.stopped = True
            except Exception as exc:
                self._fail(slot, exc)
                continue
            trial.epoch += 1
            if not trial.stopped:  # a pruned trial's epoch is not a resume point
                going_on.append(slot)
            if trial.stopped or trial.epoch >= trial.cfg.trainer.epochs:
                done.append(slot)
        try:
            self._checkpoint(going_on)
        except Exception as exc:  # (a full disk): those trials fail, the pack goes on
            for slot in going_on:
                if slot not in done:
                    self._fail(slot, exc)
        for slot in done:
            if self.slots[slot] is not None:
                self._finish(slot)

    def _finish(self, slot: int) -> None:
        """The slot is free at once; the trial's test evaluation and record (on its own standard
        LeNet: the fused graph would evaluate every slot) run in the recorder thread while the pack
        trains on, and its result goes to the sweeper when its run is ended."""
        trial = self.slots[slot]
        try:
            trial.logger.close()
            model = self.pack.to_keras(slot, _name(trial.cfg.model.activation))
            model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        except Exception as exc:
            return self._fail(slot, exc)
        self._release(slot)
        self.recording.append((trial, self.recorder.submit(self._record, trial, model)))

    def _record(self, trial: Trial, model) -> None:
        """In the recorder thread: what :func:`lenet_sweep.train.train` records after training."""
        from lenet_sweep import fast_fit, registry
        from lenet_sweep.__main__ import objective
        from lenet_sweep.train import record_end

        try:
            tester = fast_fit.InGraphTrainer(model, trial.cfg.data.batch_size)
            test = tester.evaluate(self.tensors.x_test, self.tensors.y_test)
            metrics = record_end(trial.client, trial.run_id, model, self.splits, trial.logger.history, test,
                                 tester.predict_classes, xla=False, stopped=trial.stopped,
                                 output_dir=trial.output_dir)
            if trial.checkpoint_seconds:
                tracking.log_metrics(trial.client, trial.run_id,
                                     {"checkpoint_seconds": trial.checkpoint_seconds},
                                     step=len(trial.logger.history) - 1)
            tracking.end_run(trial.client, trial.run_id)
            self._discard_checkpoints(trial)
            registry.register_if_asked(trial.client, trial.run_id, trial.cfg)
            trial.reporter.raise_if_pruned()
            value = objective(metrics, trial.cfg.objective)
        except Exception as exc:
            return self._end(trial, exc)
        self.emit(trial.idx, trial.overrides, value, None)

    def _fail(self, slot: int, exc: BaseException) -> None:
        trial = self.slots[slot]
        self._release(slot)
        self._end(trial, exc)

    def _end(self, trial: Trial, exc: BaseException) -> None:
        """The trial ends with ``exc``: its run is closed as ``exc`` says (a pruned trial's was ended
        FINISHED when recorded), and the sweeper hears of it."""
        import optuna

        trial.logger.close(quiet=True)
        if isinstance(exc, (optuna.TrialPruned, UserError)):  # ended (a diverged loss would diverge
            self._discard_checkpoints(trial)  # again); an interruption or a crash keeps its resume point
        if not isinstance(exc, optuna.TrialPruned):
            if not isinstance(exc, UserError):
                log.warning("trial job %s failed: %s", trial.idx, tracking.error_line(exc))
            try:
                tracking.end_run(trial.client, trial.run_id, exc)
            except Exception:  # the sweeper closes the run if this could not
                pass
        self.emit(trial.idx, trial.overrides, None, exc)

    def _release(self, slot: int) -> None:
        self.slots[slot] = None
        self.pack.release(slot)

    def run(self) -> None:
        with tracking.sigterm_as_exit():
            try:
                while True:
                    self._take()
                    if not any(self.slots):
                        if self.closed:
                            self.recorder.shutdown(wait=True)
                            return
                        continue
                    self._epoch()
                    self.recording = [(t, f) for t, f in self.recording if not f.done()]
            except BaseException as exc:  # SIGTERM, Ctrl-C, a crash: no run of this pack stays RUNNING
                self.recorder.shutdown(wait=False, cancel_futures=True)
                unrecorded = [t for t, f in self.recording if f.cancelled()]
                for trial in [*filter(None, self.slots), *unrecorded]:
                    self._end(trial, exc)
                raise
