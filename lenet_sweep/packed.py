"""Packed trials: K LeNets of one architecture trained as one fused graph (horizontal fusion).

Trials of one sweep share the architecture and differ in hyperparameters, so K of them train as one
model whose weights carry a leading slot axis ``[K, ...]``:

- the first convolution is one depthwise convolution (channel multiplier = its filters) over the K
  slots' own batches stacked on the channel axis (slot k's images on channel k); the next ones are
  grouped convolutions written as one ``conv2d`` per slot: TensorFlow has no CPU gradient for a
  grouped ``conv2d``, XLA's CPU depthwise backward is ~50× slower here, and a depthwise-then-sum
  form measured 1.7× slower than the per-slot ops (2-core AMD EPYC, K = 8, batch 32);
- the dense layers are batched matmuls ``einsum('bki,kio->bko')``;
- the loss is the sum of the slots' batch-mean losses, so each slot's gradient is its own;
- each slot's ``lr``, ``momentum``, ``nesterov`` and hidden activation (sigmoid or ReLU) are tensors
  held in variables, so a slot takes a new trial without retracing the graph;
- the update is Keras' SGD rule per slot (``m = m·momentum − g·lr``; ``w += m``, or with Nesterov
  ``w += m·momentum − g·lr``; with momentum 0 this is exactly ``w −= g·lr``).

A slot's trial does not depend on its neighbours: its initial weights are those :func:`build_lenet`
builds after ``keras.utils.set_random_seed(seed)`` (as :func:`lenet_sweep.train.train` does), and
each epoch it draws its own batch order from its own ``np.random.default_rng(seed)``, as
:func:`lenet_sweep.fast_fit.fit` does. What the slots share is the architecture (``model`` config
less ``activation``), the batch size and the data.

Knows nothing of MLflow or Optuna (:mod:`lenet_sweep.pack_driver` refills slots as trials end).
"""

from __future__ import annotations

from dataclasses import dataclass

from lenet_sweep.quiet import import_tensorflow

import_tensorflow()  # first: TensorFlow's C++ start-up lines filtered (lenet_sweep.quiet)
import keras  # noqa: E402
import numpy as np
import tensorflow as tf
from omegaconf import OmegaConf

from lenet_sweep.fast_fit import EVAL_BATCH
from lenet_sweep.model import _name, build_lenet


@dataclass(frozen=True)
class SlotParams:
    """What varies between the trials of a pack."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    activation: str = "sigmoid"  # model.activation: sigmoid or relu


class PackedLeNet:
    """K LeNet-5 slots over in-memory training tensors ``x`` ``[N, H, W, 1]``, ``y`` ``[N]``."""

    def __init__(self, model_cfg, slots: int, batch_size: int, x, y):
        if x.shape[-1] != 1:
            raise ValueError(f"packed trials need one input channel, not {x.shape[-1]}")
        self.model_cfg, self.slots, self.batch_size = model_cfg, slots, batch_size
        self.x, self.y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        self.n = int(self.x.shape[0])
        self.steps = -(-self.n // batch_size)
        shapes = [tuple(w.shape) for w in build_lenet(model_cfg, tuple(x.shape[1:])).weights]
        self.n_conv = len(model_cfg.conv_filters)
        self.pool = model_cfg.pool_size
        self.softmax = _name(model_cfg.output_activation) == "softmax"
        self.weights = [tf.Variable(tf.zeros((slots, *s)), name=f"w{i}") for i, s in enumerate(shapes)]
        self.velocity = [tf.Variable(tf.zeros((slots, *s)), trainable=False) for s in shapes]
        self.lr = tf.Variable(tf.zeros(slots), trainable=False)
        self.momentum = tf.Variable(tf.zeros(slots), trainable=False)
        self.nesterov = tf.Variable(tf.zeros(slots, tf.bool), trainable=False)
        self.relu = tf.Variable(tf.zeros(slots, tf.bool), trainable=False)
        # per-slot sums over the current epoch: loss·samples, correct predictions; and samples seen
        self.loss_sum = tf.Variable(tf.zeros(slots), trainable=False)
        self.correct = tf.Variable(tf.zeros(slots), trainable=False)
        self.seen = tf.Variable(0.0, trainable=False)
        self.rngs: list[np.random.Generator | None] = [None] * slots
        self._train_chunk = tf.function(self._chunk)
        self._eval = tf.function(self._eval_batch, input_signature=[
            tf.TensorSpec([None, *x.shape[1:]], self.x.dtype), tf.TensorSpec([None], self.y.dtype)])

    # -- slots --------------------------------------------------------------------------------
    def assign(self, slot: int, params: SlotParams, seed: int) -> keras.Sequential:
        """Start a new trial in ``slot``: the weights a standalone run with ``seed`` starts from,
        fresh optimizer state, the trial's hyperparameters and its own batch-order generator.
        Returns that standalone run's initial model."""
        keras.utils.set_random_seed(seed)
        reference = self._lenet(params.activation)
        for var, vel, value in zip(self.weights, self.velocity, reference.weights):
            var[slot].assign(keras.ops.convert_to_numpy(value))
            vel[slot].assign(tf.zeros(value.shape))
        self.lr[slot].assign(params.lr)
        self.momentum[slot].assign(params.momentum)
        self.nesterov[slot].assign(bool(params.nesterov))
        self.relu[slot].assign(_name(params.activation) == "relu")
        self.rngs[slot] = np.random.default_rng(seed)
        return reference

    def _lenet(self, activation: str) -> keras.Sequential:
        return build_lenet(OmegaConf.merge(self.model_cfg, {"activation": _name(activation)}),
                           tuple(self.x.shape[1:]))

    def release(self, slot: int) -> None:
        """Leave ``slot`` empty: it still computes (the graph is fixed) but never changes."""
        self.lr[slot].assign(0.0)
        self.momentum[slot].assign(0.0)
        self.rngs[slot] = None

    def slot_weights(self, slot: int) -> list[np.ndarray]:
        """``slot``'s weights in :func:`build_lenet`'s order (``model.set_weights`` takes them)."""
        return [w[slot].numpy() for w in self.weights]

    def slot_states(self, slots) -> dict[int, tuple[list[np.ndarray], list[np.ndarray], dict]]:
        """Each of ``slots``' resume point: its weights and SGD velocities (:func:`build_lenet`'s
        order) and its batch-order generator's state; every variable is read once for all of them."""
        weights, velocity = [w.numpy() for w in self.weights], [v.numpy() for v in self.velocity]
        return {k: ([w[k] for w in weights], [v[k] for v in velocity], self.rngs[k].bit_generator.state)
                for k in slots}

    def restore(self, slot: int, epochs: int, weights, velocities, rng_state: dict | None) -> None:
        """Continue ``slot``'s trial (just :meth:`assign`-ed) after ``epochs`` epochs: its weights,
        velocities and batch-order generator as a checkpoint saved them (no generator state: the
        ``epochs`` draws again)."""
        for var, vel, w, m in zip(self.weights, self.velocity, weights, velocities):
            var[slot].assign(w)
            vel[slot].assign(m)
        if rng_state is not None:
            self.rngs[slot].bit_generator.state = rng_state
        else:
            for _ in range(epochs):
                self.rngs[slot].permutation(self.n)

    def to_keras(self, slot: int, activation: str) -> keras.Sequential:
        """A standard LeNet holding ``slot``'s weights (``save_weights`` writes a usual file)."""
        model = self._lenet(activation)
        model.set_weights(self.slot_weights(slot))
        return model

    # -- the fused graph ----------------------------------------------------------------------
    def _act(self, z, channels: int | None = None):
        """Each slot's hidden activation; ``channels``: z is ``[..., K·channels]``, else ``[B, K, O]``."""
        mask = tf.repeat(self.relu, channels) if channels else self.relu[:, None]
        return tf.where(mask, tf.nn.relu(z), tf.sigmoid(z))

    def forward(self, x):
        """``x`` ``[B, H, W, K]`` (slot k's images on channel k) -> logits ``[B, K, classes]``."""
        k, w = self.slots, self.weights
        h = x
        for i in range(self.n_conv):
            kernel, bias = w[2 * i], w[2 * i + 1]  # [K, kh, kw, cin, cout], [K, cout]
            _, kh, kw, cin, cout = kernel.shape
            if i == 0:  # one input channel per slot: one depthwise convolution, multiplier cout
                filters = tf.reshape(tf.transpose(kernel, (1, 2, 0, 3, 4)), (kh, kw, k * cin, cout))
                h = tf.nn.depthwise_conv2d(h, filters, (1, 1, 1, 1), "VALID")
            else:  # a grouped convolution, one conv2d per slot (see the module docstring)
                h = tf.concat([tf.nn.conv2d(part, kernel[j], 1, "VALID")
                               for j, part in enumerate(tf.split(h, k, axis=-1))], axis=-1)
            h = self._act(tf.nn.bias_add(h, tf.reshape(bias, (-1,))), cout)
            h = tf.nn.max_pool2d(h, self.pool, self.pool, "VALID")
        _, hh, ww, kc = h.shape
        c = kc // k
        h = tf.reshape(tf.transpose(tf.reshape(h, (-1, hh, ww, k, c)), (0, 3, 1, 2, 4)), (-1, k, hh * ww * c))
        dense = range(2 * self.n_conv, len(w), 2)
        for j, i in enumerate(dense):
            h = tf.einsum("bki,kio->bko", h, w[i]) + w[i + 1]
            if j < len(dense) - 1:
                h = self._act(h)
        return h  # logits

    def losses(self, x, y):
        """Per-slot batch-mean losses ``[K]`` and output probabilities; ``y`` ``[B, K]``.

        Keras' ``sparse_categorical_crossentropy`` on a sigmoid or softmax output layer reads the
        logits the activation leaves on its output (``_keras_logits``) and computes softmax
        cross-entropy from them; so does this (the output activation only gives the probabilities
        that accuracy's argmax reads, which saturated sigmoids can tie)."""
        logits = self.forward(x)
        per_sample = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)  # [B, K]
        probs = tf.nn.softmax(logits) if self.softmax else tf.sigmoid(logits)
        return tf.reduce_mean(per_sample, axis=0), probs

    def _accumulate(self, losses, probs, y) -> None:
        b = tf.cast(tf.shape(y)[0], tf.float32)
        self.loss_sum.assign_add(losses * b)
        hits = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=y.dtype), y), tf.float32)
        self.correct.assign_add(tf.reduce_sum(hits, axis=0))
        self.seen.assign_add(b)

    def train_step(self, x, y) -> None:
        with tf.GradientTape() as tape:
            losses, probs = self.losses(x, y)
            total = tf.reduce_sum(losses)  # slot k's variables get slot k's gradient only
        grads = tape.gradient(total, self.weights)
        shape = (self.slots,)
        for var, vel, g in zip(self.weights, self.velocity, grads):
            rank = (1,) * (len(var.shape) - 1)
            lr, mom = tf.reshape(self.lr, shape + rank), tf.reshape(self.momentum, shape + rank)
            m = vel * mom - g * lr
            vel.assign(m)
            var.assign_add(tf.where(tf.reshape(self.nesterov, shape + rank), m * mom - g * lr, m))
        self._accumulate(losses, probs, y)

    def _chunk(self, perms, begin, end):
        bs = self.batch_size
        for i in tf.range(begin, end):
            idx = perms[:, i * bs:(i + 1) * bs]  # [K, b]
            x = tf.transpose(tf.squeeze(tf.gather(self.x, idx), -1), (1, 2, 3, 0))  # [b, H, W, K]
            self.train_step(x, tf.transpose(tf.gather(self.y, idx)))

    def _eval_batch(self, x, y):
        """Every slot on the same images: accumulates per-slot sums; returns predicted classes [B, K]."""
        xk = tf.tile(x, (1, 1, 1, self.slots))
        yk = tf.tile(y[:, None], (1, self.slots))
        losses, probs = self.losses(xk, yk)
        self._accumulate(losses, probs, yk)
        return tf.argmax(probs, -1)

    # -- epochs -------------------------------------------------------------------------------
    def _results(self) -> list[dict[str, float]]:
        seen = float(self.seen.numpy())
        return [{"loss": l / seen, "accuracy": c / seen}
                for l, c in zip(self.loss_sum.numpy().tolist(), self.correct.numpy().tolist())]

    def _reset(self) -> None:
        for v in (self.loss_sum, self.correct):
            v.assign(tf.zeros_like(v))
        self.seen.assign(0.0)

    def train_epoch(self, steps_per_execution: int = 100) -> list[dict[str, float]]:
        """One epoch for every slot (each on its own batch order); per-slot ``loss``, ``accuracy``
        (empty slots: meaningless values)."""
        self._reset()
        perms = np.stack([rng.permutation(self.n).astype(np.int32) if rng is not None
                          else np.arange(self.n, dtype=np.int32) for rng in self.rngs])
        perms = tf.constant(perms)
        for begin in range(0, self.steps, steps_per_execution):
            end = min(begin + steps_per_execution, self.steps)
            self._train_chunk(perms, tf.constant(begin), tf.constant(end))
        return self._results()

    def evaluate(self, x, y) -> tuple[list[dict[str, float]], np.ndarray]:
        """Per-slot ``loss``, ``accuracy`` over all of (x, y), and each slot's predicted classes
        ``[N, K]``."""
        self._reset()
        x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        classes = [self._eval(x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]).numpy()
                   for i in range(0, int(x.shape[0]), EVAL_BATCH)]
        return self._results(), np.concatenate(classes)

