"""A sweep worker that hosts K trials at once (``hydra.launcher.pack=K``): one fused
:class:`~lenet_sweep.model.packed.PackedLeNet`, each slot refilled with the next trial at an epoch boundary.

Each trial arrives as the Hydra job it would be unpacked — its overrides, composed by Hydra's
``run_job`` (its folder, ``.hydra/`` files, and the sweeper's :class:`~lenet_sweep.trial.TrialPayload`
there) — and leaves as that job's ``JobReturn``. Its MLflow child run records what an unpacked
trial's, through the same :class:`lenet_sweep.training.record.RunRecord` (params, provenance,
per-epoch metrics, test metrics, pictures, ``.weights.h5``, one place that ends the run) plus tags
``pack`` (``slot/size``) and ``pack_formulation`` (the slot convolutions'), the pack's width at each epoch (``pack_width``) and its phases
(:mod:`lenet_sweep.training.runtime`); its Optuna trial gets each epoch's report and may be pruned.

Three threads keep the pack training:

- the *starter* takes each trial from the inbox as it arrives and prepares everything it needs
  before its first step (its Hydra job, its run's params and provenance, its reporter, its initial
  weights, a retried trial's checkpoint) while the pack trains; at the next epoch boundary its slot
  only takes the weights and hyperparameters;
- the main thread trains the pack, epoch after epoch, at the width of its live trials
  (:mod:`lenet_sweep.model.packed`);
- the *recorder* evaluates each ending trial on the test set (one traced evaluator per activation,
  weights assigned, never re-traced) and records it, while the pack trains on.

At each pack epoch every training slot keeps its trial's checkpoint in the trial's folder
(:mod:`lenet_sweep.training.checkpoint`: the slot's weights, its SGD velocities laid out as Keras' SGD
momentums, its batch-order generator, the history), as an unpacked trial does. A retried trial
(``TrialPayload.resume_from``: its failed attempt's folder) enters its slot where that attempt's
checkpoint stood, packed or not: bit for bit the uninterrupted trial when it trains at the same pack
widths (a lane's arithmetic does not depend on its place or neighbours), equal up to float rounding
at other widths or unpacked (other kernels).

Like :mod:`lenet_sweep.training.train`, this is the job side of the sweeper ↔ worker protocol
(:mod:`lenet_sweep.trial`): it does not import ``lenet_sweep.sweep``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import run_job
from omegaconf import DictConfig, OmegaConf, open_dict

from lenet_sweep import devices, tracking
from lenet_sweep.config import BATCHES, ConfigError, UserError, objective_value, validate
from lenet_sweep.model import _name, build_lenet, format_shape_table
from lenet_sweep.model.packed import BUILD_LOCK, PackedLeNet, SlotParams, SlotState, restore_rng
from lenet_sweep.pack.rules import PACKED_KEYS, shared_part, unpackable
from lenet_sweep.training import checkpoint, runtime
from lenet_sweep.trial import Reporter, TrialPayload

log = logging.getLogger(__name__)

#: seconds between the starter's looks at an empty inbox
POLL_S = 0.01
#: seconds the main thread, stopping (SIGTERM, a crash), gives the starter to finish the trial it
#: prepares (its run is then ended too)
STOP_GRACE_S = 3.0
_CLOSED = object()  # in ``ready``: the inbox said no more


@dataclass
class _Crashed:
    """In ``ready``: the starter thread itself failed (not a trial): the worker fails with it."""

    exc: BaseException


@dataclass
class Trial:
    """A trial: prepared by the starter, then in a slot, then recorded."""

    idx: int
    overrides: list[str]
    cfg: DictConfig
    output_dir: Path
    payload: TrialPayload
    reporter: Reporter
    record: Any  # lenet_sweep.training.record.RunRecord: its run, epoch logger and phases
    state: SlotState | None  # what its slot takes at the boundary (None once it entered)
    setup_seconds: float = 0.0
    epoch: int = 0  # epochs trained (the last one's number: epochs count from 1)
    stopped: bool = False
    folder: Path | None = None  # where its checkpoint goes (trainer.checkpoint*; None: none)

    @property
    def phases(self) -> runtime.Phases:
        return self.record.phases

    @property
    def logger(self):
        return self.record.logger


class PackWorker:
    """The worker's loop: take ``(idx, overrides)`` from ``inbox`` (None: no more), train them packed,
    and hand each trial's end to ``emit(idx, overrides, value, exc)`` (its objective value, or the
    exception the job would have raised: ``optuna.TrialPruned`` for a pruned trial). ``emit`` is
    called from any of the worker's threads."""

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
        self.closed = False
        # the starter thread: inbox -> ready
        self.ready: queue.Queue = queue.Queue()
        self.intake = threading.Lock()  # taking from the inbox and counting it are one step
        self.preparing = 0  # trials taken from the inbox and not yet in ``ready`` (or failed)
        self.stopping: BaseException | None = None
        self.starter = threading.Thread(target=self._starter, daemon=True, name="pack-starter")
        # the recorder thread: ending trials' test evaluation and record
        self.recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-record")
        self.recording: list[tuple[Trial, Future]] = []  # trials whose record is queued or running
        self.evaluators: dict[str, tuple] = {}  # activation -> (model, InGraphTrainer): recorder only

    # -- trials in: the starter thread --------------------------------------------------------
    def _starter(self) -> None:
        try:
            while self.stopping is None:
                with self.intake:
                    try:
                        msg = self.inbox.get_nowait()
                    except queue.Empty:
                        msg = queue.Empty
                    else:
                        self.preparing += 1
                if msg is queue.Empty:
                    time.sleep(POLL_S)
                    continue
                try:
                    if msg is None:
                        self.ready.put(_CLOSED)
                        return
                    trial = self._prepare(*msg)
                    if trial is not None:
                        if self.stopping is not None:  # the worker is stopping: no slot for it
                            self._end(trial, self.stopping)
                        else:
                            self.ready.put(trial)
                finally:
                    with self.intake:
                        self.preparing -= 1
        except BaseException as exc:  # a bug here, not a trial's failure: the worker fails with it
            self.ready.put(_Crashed(exc))

    def _more_coming(self) -> bool:
        """A trial is being prepared, or waits in the inbox or in ``ready``."""
        with self.intake:
            return self.preparing > 0 or not self.inbox.empty() or not self.ready.empty()

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

    def _pack_for(self, cfg: DictConfig) -> PackedLeNet:
        """The worker's pack, made for its first trial; a ConfigError for a trial it cannot hold."""
        if self.pack is None:
            self.splits = runtime.splits(cfg.data)
            self.device = devices.configure()
            self.tensors = runtime.tensors(self.splits)
            self.shared = shared_part(cfg)
            # hydra.launcher.batches=shared: one stream for the pack, from the sweep's seed
            sweep = self.config.hydra
            self.stream_seed = sweep.sweeper.get("seed") or 0
            self.pack = PackedLeNet(cfg.model, self.size, cfg.data.batch_size, self.tensors.x_train,
                                    self.tensors.y_train, batches=sweep.launcher.get("batches", BATCHES[0]),
                                    stream_seed=self.stream_seed)
        elif shared_part(cfg) != self.shared:
            raise ConfigError("this trial differs from its pack in more than "
                              f"{', '.join(PACKED_KEYS)}: run it with hydra.launcher.pack=1")
        return self.pack

    def _prepare(self, idx: int, overrides: list[str]) -> Trial | None:
        """Everything the trial needs before its first step; None when it failed (then its end is
        emitted here)."""
        from lenet_sweep.training.record import RunRecord

        phases = runtime.Phases()
        trial = opened = None
        try:
            cfg, output_dir, task_overrides = self._compose(overrides, idx)
            validate(cfg)
            payload = TrialPayload.read(output_dir)
            if payload is None:
                raise RuntimeError(f"no {output_dir}/.trial.json: a packed worker runs sweep trials only")
            if cfg.trainer.resume:
                raise ConfigError(f"trainer.resume={cfg.trainer.resume} continues one run, not a sweep's "
                                  "trials (a sweep's retried trial resumes from its failed attempt by itself)")
            why = unpackable(cfg)
            if why:
                raise ConfigError(f"this trial cannot be packed: {why}")
            pack = self._pack_for(cfg)
            later = ()
            if pack.batches == "shared":  # its batch orders: the pack's stream, from where it enters
                cfg.trainer.stream_seed, later = self.stream_seed, ("trainer.stream_position",)
            params = SlotParams(lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum,
                                nesterov=cfg.optimizer.nesterov, activation=_name(cfg.model.activation))
            # a retried trial: its failed attempt's checkpoint, if it wrote one of this config
            ckpt = checkpoint.for_retry(payload.resume_from, cfg) if payload.resume_from else None
            reporter = Reporter(payload)
            state, model = pack.initial_state(params, cfg.seed)  # its initial model: for the record
            client = runtime.client(cfg.mlflow)
            run_id = payload.run_id
            tags = {"hydra.overrides": tracking.redact(task_overrides), "device": self.device}
            if ckpt is not None:
                tags.update({"resumed_from": tracking.redact(payload.resume_from),
                             "resumed_after_epoch": str(ckpt.epoch)})
            tc = cfg.trainer
            folder = None
            if tc.checkpoint:
                folder = Path(tc.checkpoint_dir).expanduser() if tc.checkpoint_dir else output_dir
            opened = RunRecord(client, run_id, cfg, len(self.splits.x_train), phases,
                               checkpoints=(folder, payload.resume_from))
            tracking.log_params(client, run_id, {}, tags)
            opened.start(model, self.splits, format_shape_table(model), later)
            trial = Trial(idx, overrides, cfg, output_dir, payload, reporter, opened, state, folder=folder)
            if ckpt is not None:
                self._resume(trial, ckpt)
        except Exception as exc:  # this trial fails; the pack goes on
            if trial is not None:
                self._end(trial, exc)
                return None
            if opened is not None:
                opened.fail(exc)
            log.warning("trial job %s failed before training: %s", idx, tracking.error_line(exc))
            self.emit(idx, overrides, None, exc)
            return None
        trial.setup_seconds = phases.enter(None)  # then it waits for its slot
        return trial

    def _resume(self, trial: Trial, ckpt: checkpoint.Checkpoint) -> None:
        """The trial continues its failed attempt: its slot state is the checkpoint's, the attempt's
        epochs are logged to this trial's run and reported to its Optuna trial (without asking the
        pruner: it judges the first epoch trained here), its checkpoint carried into this trial's
        folder."""
        velocities = checkpoint.sgd_velocities(ckpt, [w.shape for w in trial.state.weights])
        rng = trial.state.rng
        restore_rng(rng, ckpt.epoch, self.pack.n, ckpt.rng)
        trial.state = SlotState(trial.state.params, ckpt.weights, velocities, rng)
        trial.epoch = ckpt.epoch
        trial.logger.replay(ckpt.history)
        for epoch, logs in enumerate(ckpt.history, start=1):
            value = logs.get(trial.payload.monitor)
            if value is not None and math.isfinite(value):
                trial.reporter.report(epoch, value, ask=False)
        if trial.folder is not None:
            self._write_checkpoint(trial, ckpt.weights, velocities, rng.bit_generator.state)

    # -- trials in: at the epoch boundary -----------------------------------------------------
    def _take(self) -> None:
        """Fill free slots with the prepared trials. While no slot trains, block for one, and also
        for every trial already sent (being prepared, or in the inbox): they start together. A
        freed slot does not wait for the sweeper's next trial (that would stall every slot of the
        pack): the trial enters at the first epoch boundary after it is prepared."""
        idle, first = not any(self.slots), True
        while not self.closed and None in self.slots:
            if idle:
                if not first and not self._more_coming():
                    return
                item = self._next_ready()
            else:
                try:
                    item = self.ready.get_nowait()
                except queue.Empty:
                    return
            first = False
            if item is _CLOSED:
                self.closed = True
                return
            if isinstance(item, _Crashed):
                raise item.exc
            self._enter(item)

    def _next_ready(self):
        while True:  # a timeout: signals (SIGTERM) are handled while waiting
            try:
                return self.ready.get(timeout=0.5)
            except queue.Empty:
                continue

    def _enter(self, trial: Trial) -> None:
        """The trial takes the first free slot (only its weights and hyperparameters)."""
        trial.phases.add("wait_slot", runtime.waited(trial.payload.written_at, time.time(),
                                                     trial.setup_seconds) or 0.0)
        if trial.epoch >= trial.cfg.trainer.epochs:  # resumed after its last epoch (the attempt
            trial.phases.enter("wait_record")  # died recording): test and record only
            self._to_recorder(trial, trial.state.weights)
            return
        trial.phases.enter("train")
        slot = self.slots.index(None)
        self.pack.put(slot, trial.state)
        trial.state = None
        if self.pack.batches == "shared":  # the stream orders drawn before its first epoch here
            trial.record.param("trainer.stream_position", self.pack.stream_position[slot])
        trial.logger.tag("pack", f"{slot}/{self.size}")
        trial.logger.tag("pack_formulation", ",".join(self.pack.formulations))  # per slot convolution
        trial.reporter.entered(slot, self.size)
        self.slots[slot] = trial

    # -- an epoch -------------------------------------------------------------------------------
    def _epoch(self) -> None:
        for trial in filter(None, self.slots):
            trial.logger.on_epoch_begin(trial.epoch)
        spe = next(filter(None, self.slots)).cfg.trainer.steps_per_execution  # the same in a pack
        width = self.pack.width
        train = self.pack.train_epoch(spe)
        val, _ = self.pack.evaluate(self.tensors.x_val, self.tensors.y_val)
        done, going_on = [], []
        for slot, trial in enumerate(self.slots):
            if trial is None:
                continue
            logs = {**train[slot], **{f"val_{k}": v for k, v in val[slot].items()},
                    runtime.PACK_WIDTH: width}
            try:
                trial.logger.on_epoch_end(trial.epoch, logs)  # Keras' 0-based index; raises on NaN
                trial.epoch += 1  # epochs trained: this one's number (from 1)
                value = logs.get(trial.payload.monitor)
                if value is not None and math.isfinite(value) and trial.reporter.report(trial.epoch, value):
                    trial.stopped = True
            except Exception as exc:
                self._fail(slot, exc)
                continue
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

    def _checkpoint(self, slots: list[int]) -> None:
        """The trials of ``slots`` keep their resume point in their folders (trainer.checkpoint)."""
        slots = [k for k in slots if self.slots[k] is not None and self.slots[k].folder is not None]
        if not slots:
            return
        start = time.perf_counter()
        states = self.pack.slot_states(slots)
        share = (time.perf_counter() - start) / len(slots)
        for k in slots:
            self.slots[k].record.checkpoint_seconds += share
            self._write_checkpoint(self.slots[k], *states[k])

    def _write_checkpoint(self, trial: Trial, weights, velocities, rng_state: dict) -> None:
        begin = time.perf_counter()
        opt = checkpoint.sgd_variables(trial.epoch * self.pack.steps, trial.cfg.optimizer.lr,
                                       trial.cfg.optimizer.momentum, velocities)
        checkpoint.Checkpoint(trial.epoch, weights, opt, trial.logger.history,
                              checkpoint.fingerprint(trial.cfg), trial.record.run_id, rng_state).write(trial.folder)
        trial.record.checkpoint_seconds += time.perf_counter() - begin

    # -- trials out -----------------------------------------------------------------------------
    def _finish(self, slot: int) -> None:
        """The slot is free at once; the trial's test evaluation and record run in the recorder
        thread while the pack trains on, and its result goes to the sweeper when its run is ended."""
        trial = self.slots[slot]
        try:
            weights = self.pack.slot_weights(slot)
        except Exception as exc:
            return self._fail(slot, exc)
        trial.phases.enter("wait_record")
        self._release(slot)
        self._to_recorder(trial, weights)

    def _to_recorder(self, trial: Trial, weights) -> None:
        self.recording.append((trial, self.recorder.submit(self._record, trial, weights)))

    def _evaluator(self, cfg: DictConfig):
        """The recorder's standard LeNet of this activation (compiled for evaluation) and its traced
        test and prediction graphs, made once: each ending trial's weights are assigned to it."""
        from lenet_sweep.model import fast_fit

        activation = _name(cfg.model.activation)
        if activation not in self.evaluators:
            with BUILD_LOCK:
                model = build_lenet(OmegaConf.merge(cfg.model, {"activation": activation}),
                                    tuple(self.tensors.x_train.shape[1:]))
            model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            fast_fit._build(model, self.tensors.x_test, self.tensors.y_test)  # its metrics: traced once
            self.evaluators[activation] = (model, fast_fit.InGraphTrainer(model, cfg.data.batch_size))
        return self.evaluators[activation]

    def _record(self, trial: Trial, weights) -> None:
        """In the recorder thread: what :func:`lenet_sweep.training.train.train` records after training."""
        trial.phases.enter("evaluate")
        try:
            model, tester = self._evaluator(trial.cfg)
            model.set_weights(weights)
            test = tester.evaluate(self.tensors.x_test, self.tensors.y_test)
            trial.phases.enter("record")
            metrics = trial.record.finish(model, self.splits, test, tester.predict_classes, xla=False,
                                          stopped=trial.stopped, output_dir=trial.output_dir)
            trial.reporter.raise_if_pruned()
            value = objective_value(metrics, trial.cfg.objective)
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

        if not isinstance(exc, (optuna.TrialPruned, UserError)):
            log.warning("trial job %s failed: %s", trial.idx, tracking.error_line(exc))
        trial.record.fail(exc)
        self.emit(trial.idx, trial.overrides, None, exc)

    def _release(self, slot: int) -> None:
        self.slots[slot] = None
        self.pack.release(slot)

    def _waiting(self) -> list[Trial]:
        """The prepared trials that never entered a slot (their runs are open)."""
        out = []
        while True:
            try:
                item = self.ready.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, Trial):
                out.append(item)

    def run(self) -> None:
        self.starter.start()
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
                self.stopping = exc
                self.recorder.shutdown(wait=False, cancel_futures=True)
                unrecorded = [t for t, f in self.recording if f.cancelled()]
                for trial in [*filter(None, self.slots), *unrecorded, *self._waiting()]:
                    self._end(trial, exc)
                self.starter.join(timeout=STOP_GRACE_S)  # it ends the trial it was preparing
                for trial in self._waiting():
                    self._end(trial, exc)
                raise
