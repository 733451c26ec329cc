"""A faster ``model.fit`` for small models on in-memory data (``trainer.fast=true``).

The training set is held once in memory as one tensor. Each epoch draws a seeded permutation of the
sample indices; a ``tf.function`` then runs ``steps_per_execution`` steps in one call, each step
gathering its batch by index from the tensor and calling the model's own ``train_step`` (same
forward pass, loss, optimizer update and metric accumulation as ``fit``). No ``tf.data`` iterator is
touched per batch and Python runs once per chunk, not once per batch: that overhead is what makes
``fit`` slow for LeNet on a CPU.

What it keeps from ``fit``: per-epoch logs ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``;
every callback's ``on_train_begin/end`` and ``on_epoch_begin/end`` (so a NaN check or a pruning callback
stops training at epoch end, ``model.stop_training`` is honoured); the Keras progress bar; a History
in ``model.history``; the same number of updates per epoch (the last batch may be smaller).
What it gives up: ``on_train_batch_begin/end`` are called once per chunk of ``steps_per_execution``
batches (as Keras does with ``steps_per_execution``), and the ``on_test_*`` hooks are not called.
Validation runs in batches of :data:`EVAL_BATCH` (the mean is the same, up to float rounding).

Resuming: ``fit(resume=LoopState(...))`` continues after the epochs a checkpoint holds (the model's
and optimizer's variables restored by the caller) with the batch order and XLA variant the
uninterrupted run would have used next, so it ends with the same bits; ``after_epoch`` hands the
caller the loop's state at each epoch end to save (:mod:`lenet_sweep.training.checkpoint`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from lenet_sweep.quiet import import_tensorflow

import_tensorflow()  # first: TensorFlow's C++ start-up lines filtered (lenet_sweep.quiet)
import keras  # noqa: E402
import numpy as np
import tensorflow as tf

# Every trial a sweep worker runs builds its own tf.functions: TensorFlow's "triggered tf.function
# retracing" warning is expected there, not a sign of a retracing loop.
logging.getLogger("tensorflow").addFilter(
    lambda record: "triggered tf.function retracing" not in record.getMessage())

#: batch size for validation/test passes: larger batches, fewer steps; the mean does not depend on it
EVAL_BATCH = 1024


def _floats(logs) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items()}


def _build(model: keras.Model, x, y) -> None:
    """Create the optimizer's and metrics' variables before tracing, as ``fit`` does."""
    symbolic_build = getattr(model, "_symbolic_build", None)
    if symbolic_build is not None:
        symbolic_build(data_batch=(x[:1], y[:1]))
    elif not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


class InGraphTrainer:
    """Runs ``model.train_step`` / ``model.test_step`` over in-memory tensors, in-graph."""

    def __init__(self, model: keras.Model, batch_size: int, jit_compile: bool = False):
        self.model, self.batch_size, self.jit_compile = model, batch_size, jit_compile
        step = tf.function(model.train_step, jit_compile=True) if jit_compile else model.train_step
        test_step = tf.function(model.test_step, jit_compile=True) if jit_compile else model.test_step

        @tf.function
        def train_chunk(x, y, perm, begin, end):
            for i in tf.range(begin, end):
                idx = perm[i * batch_size:(i + 1) * batch_size]
                step((tf.gather(x, idx), tf.gather(y, idx)))

        def batches(n):
            return tf.range((n + EVAL_BATCH - 1) // EVAL_BATCH)

        def test_all(x, y):
            for i in batches(tf.shape(x)[0]):
                test_step((x[i * EVAL_BATCH:(i + 1) * EVAL_BATCH], y[i * EVAL_BATCH:(i + 1) * EVAL_BATCH]))

        def predict_classes(x):
            n = tf.shape(x)[0]
            out = tf.TensorArray(tf.int64, size=0, dynamic_size=True, infer_shape=False)
            for i in batches(n):
                out = out.write(i, tf.argmax(model(x[i * EVAL_BATCH:(i + 1) * EVAL_BATCH], training=False), -1))
            return out.concat()

        self._train_chunk, self._test_all, self._predict = train_chunk, test_all, predict_classes
        self._traced: dict = {}

    def _graph(self, name: str, x, y=None):
        """``name``'s tf.function, traced once for any number of samples (validation, test, ...)."""
        if name not in self._traced:
            specs = [tf.TensorSpec([None, *x.shape[1:]], x.dtype)]
            if y is not None:
                specs.append(tf.TensorSpec([None, *y.shape[1:]], y.dtype))
            self._traced[name] = tf.function(getattr(self, f"_{name}"), input_signature=specs)
        return self._traced[name]

    def train_steps(self, x, y, perm, begin: int, end: int) -> None:
        self._train_chunk(x, y, perm, tf.constant(begin, tf.int32), tf.constant(end, tf.int32))

    def evaluate(self, x, y) -> dict[str, float]:
        """Loss and metrics over all of (x, y), like ``model.evaluate(return_dict=True)``."""
        self.model.reset_metrics()
        self._graph("test_all", x, y)(x, y)
        return _floats(self.model.get_metrics_result())

    def predict_classes(self, x) -> np.ndarray:
        """The predicted class of every sample of ``x`` (argmax of the model's output)."""
        return self._graph("predict", x)(x).numpy()


#: per process, (batch size, dtype, variable shapes) -> True where the XLA step measured faster
MEASURED: dict[tuple, bool] = {}


#: chunks a measurement takes: each variant once to trace (and compile), then once timed
MEASURE_CHUNKS = 4


def count_chunks(samples: int, batch_size: int, epochs: int, steps_per_execution: int) -> int:
    """Training chunks (compiled calls of up to ``steps_per_execution`` batches) in a whole run."""
    steps = -(-samples // batch_size)
    return epochs * -(-steps // steps_per_execution)


class JitChooser:
    """``jit_compile=None``: the first training chunks run with and without XLA, each once to trace
    (and compile) and once timed; the faster per step trains the rest, and later runs of the same
    shape in this process (a sweep worker's next trials) take it without measuring again. Every chunk
    is a real training chunk: the steps and their order are the same whichever variant runs them.
    A run of fewer than ``MEASURE_CHUNKS`` chunks (``chunks``) cannot measure, nor win back an XLA
    compile: it trains without XLA, and nothing is remembered."""

    def __init__(self, model, batch_size: int, x, jit_compile: bool | None, chunks: int | None = None):
        self.model, self.batch_size = model, batch_size
        self.key = (batch_size, x.dtype.name, tuple(tuple(v.shape) for v in model.trainable_variables))
        chosen = MEASURED.get(self.key) if jit_compile is None else jit_compile
        if chosen is None and chunks is not None and chunks < MEASURE_CHUNKS:
            chosen = False  # too short to measure: no compile to pay for
        # (variant, timed?): each variant once to trace or compile, then once timed
        self.plan = [(True, False), (True, True), (False, False), (False, True)] if chosen is None else []
        self.jit = bool(chosen)  # the choice; while measuring, the last chunk's (a run stopped early)
        self.per_step: dict[bool, float] = {}
        self.trainers: dict[bool, InGraphTrainer] = {}

    def trainer(self, jit: bool | None = None) -> InGraphTrainer:
        """The trainer of ``jit``, by default of ``self.jit``."""
        jit = self.jit if jit is None else jit
        if jit not in self.trainers:
            self.trainers[jit] = InGraphTrainer(self.model, self.batch_size, jit)
        return self.trainers[jit]

    def state(self) -> dict:
        """What a resumed run needs to train its next chunks with the variant this one would use."""
        return {"jit": self.jit, "plan": [list(p) for p in self.plan],
                "per_step": {str(k).lower(): v for k, v in self.per_step.items()}}

    def restore(self, state: dict) -> None:
        self.jit, self.plan = bool(state["jit"]), [tuple(p) for p in state["plan"]]
        self.per_step = {k == "true": v for k, v in state["per_step"].items()}

    def train_steps(self, x, y, perm, begin: int, end: int) -> None:
        if not self.plan:
            return self.trainer().train_steps(x, y, perm, begin, end)
        self.jit, timed = self.plan.pop(0)
        start = time.perf_counter()
        self.trainer().train_steps(x, y, perm, begin, end)
        if timed:
            self.per_step[self.jit] = (time.perf_counter() - start) / (end - begin)
        if not self.plan:
            self.jit = MEASURED[self.key] = self.per_step[True] < self.per_step[False]


@dataclass
class LoopState:
    """Where the loop stands at an epoch boundary, besides the model's and optimizer's variables:
    what a resumed :func:`fit` needs to go on exactly as the uninterrupted one would."""

    epoch: int = 0  # epochs completed
    rng: dict | None = None  # the batch-order Generator's ``bit_generator.state`` after them
    jit: dict | None = None  # :meth:`JitChooser.state`; None: choose afresh


def fit(model: keras.Model, x, y, *, batch_size: int, epochs: int, seed: int,
        validation_data: tuple | None = None, callbacks: Sequence[keras.callbacks.Callback] = (),
        verbose: int = 1, steps_per_execution: int = 1, jit_compile: bool | None = False,
        resume: LoopState | None = None, after_epoch: Callable[[LoopState], None] | None = None,
        skip: int = 0) -> tuple[keras.callbacks.History, InGraphTrainer]:
    """Train a compiled ``model`` on tensors ``x``, ``y`` (see the module docstring).
    ``jit_compile=None`` measures which is faster here, XLA or not (:class:`JitChooser`).
    Epoch e's batch order is the ``(skip + e)``-th permutation of ``np.random.default_rng(seed)``
    (``skip``: a shared batch stream's position, ``trainer.stream_position``).

    ``resume``: continue after ``resume.epoch`` epochs (the model's and optimizer's variables already
    restored): the next epoch's batch order, and the XLA variant of its chunks, are those the
    uninterrupted run would have used. ``after_epoch`` gets the loop's state at every epoch end after
    the callbacks' ``on_epoch_end``, unless training stops there (a pruned trial).

    Returns the History (also in ``model.history``) and the trainer (its ``evaluate`` is fast; its
    ``jit_compile`` says which variant trained).
    """
    n = int(x.shape[0])
    steps = -(-n // batch_size)
    _build(model, x, y)
    chooser = JitChooser(model, batch_size, x, jit_compile,
                         chunks=count_chunks(n, batch_size, epochs, steps_per_execution))
    rng = np.random.default_rng(seed)
    for _ in range(skip):
        rng.permutation(n)
    start = 0
    if resume is not None:
        start = resume.epoch
        if resume.rng is not None:
            rng.bit_generator.state = resume.rng
        else:  # no generator state saved: the same draws again
            for _ in range(start):
                rng.permutation(n)
        if resume.jit is not None:
            chooser.restore(resume.jit)
    cbs = keras.callbacks.CallbackList(list(callbacks), add_history=True, add_progbar=verbose != 0,
                                       model=model, verbose=verbose, epochs=epochs, steps=steps)
    model.stop_training = False
    cbs.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(start, epochs):
        model.reset_metrics()
        cbs.on_epoch_begin(epoch)
        perm = tf.constant(rng.permutation(n).astype(np.int32))
        for begin in range(0, steps, steps_per_execution):
            end = min(begin + steps_per_execution, steps)
            cbs.on_train_batch_begin(begin)
            chooser.train_steps(x, y, perm, begin, end)
            cbs.on_train_batch_end(end - 1, _floats(model.get_metrics_result()))
            if model.stop_training:
                break
        logs = _floats(model.get_metrics_result())
        if validation_data is not None:
            val = chooser.trainer().evaluate(*validation_data)
            logs.update({f"val_{k}": v for k, v in val.items()})
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
        if after_epoch is not None:
            after_epoch(LoopState(epoch + 1, rng.bit_generator.state, chooser.state()))
    cbs.on_train_end(logs)
    return model.history, chooser.trainer()
