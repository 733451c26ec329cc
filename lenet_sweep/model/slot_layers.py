"""Keras layers with a slot axis: K models of one architecture computed as one (horizontal fusion,
as HFTA's fused ops do for PyTorch). :func:`lenet_sweep.model.build_lenet` builds the plain model
from Keras' own layers and, with ``slots=K``, the fused one from these; a fused layer's weights are
the K plain layers' stacked on a leading axis (``kernel[k]`` is slot k's Keras kernel), so a slot's
weights go in and come out as a plain model's.

Layouts: convolutional activations are ``[B, H, W, K·C]`` with slot k's C channels at
``k·C … k·C + C − 1`` (what a depthwise convolution over K one-channel images gives, and what Keras'
``MaxPool2D`` pools per channel unchanged); after :class:`SlotFlatten` they are ``[B, K, F]``
(slot k's features in Keras' ``Flatten`` order).

Formulations of a slot convolution (``formulation``; :func:`default_formulation` picks one):

- ``"depthwise"`` (one input channel per slot): one depthwise convolution, channel multiplier =
  filters;
- ``"per_slot"``: one ``conv2d`` per slot over its channels, concatenated (TensorFlow has no CPU
  gradient for a grouped ``conv2d``; XLA's CPU depthwise backward is ~50× slower here; a
  depthwise-then-sum form measured 1.7× slower than this, 2-core AMD EPYC, K = 8, batch 32);
- ``"patches"``: the image patches once, then one batched matmul over the slots;
- ``"grouped"``: one grouped ``conv2d`` (K groups) — GPUs only (no CPU kernel for its gradient).

The hidden activation may differ per slot (``activation=PER_SLOT``: a layer's non-trainable
``relu`` weight, 1 where slot k uses ReLU, 0 for sigmoid), so slots take new trials without
retracing; ``shared_activation`` (a call argument) computes one activation for every slot, or
sigmoid for the first n slots and ReLU for the rest, instead: at LeNet's size a step is bound by the
number of ops, and computing both activations made a pack of one train at 0.6x the speed of one
activation (2-core AMD EPYC, batch 32), so the packed trainer orders its lanes by activation and
runs a graph traced for that split. Knows nothing of training, MLflow or Optuna.
"""

from __future__ import annotations

from lenet_sweep.quiet import import_tensorflow

import_tensorflow()  # first: TensorFlow's C++ start-up lines filtered (lenet_sweep.quiet)
import keras  # noqa: E402
import tensorflow as tf
from keras import layers

#: ``activation=PER_SLOT``: sigmoid or ReLU chosen per slot by the layer's ``relu`` weight
PER_SLOT = "per_slot"
FORMULATIONS = ("depthwise", "per_slot", "patches", "grouped")


def default_formulation(slots: int, in_channels: int, on_gpu: bool = False) -> str:
    """The slot convolution's formulation unless one is asked for: grouped on GPUs; on CPUs
    depthwise for several slots of one input channel each, else one conv2d per slot (a plain conv2d
    for one slot; measured: docs/benchmarks.md, ``benchmarks/pack_throughput.py``)."""
    if on_gpu:
        return "grouped"
    return "depthwise" if in_channels == 1 and slots > 1 else "per_slot"


def conv_formulations(conv_filters, in_channels: int, slots: int, formulation: str | None = None) -> list[str]:
    """Each slot convolution's formulation in ``build_lenet(..., slots=slots, formulation=formulation)``
    (convolutions of ``conv_filters`` outputs over ``in_channels``-channel images): what a packed
    trial records (tag ``pack_formulation``)."""
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    ins = [in_channels, *list(conv_filters)[:-1]]
    return [formulation or default_formulation(slots, cin, on_gpu) for cin in ins]


class SlotLayer(layers.Layer):
    def __init__(self, slots: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.slots, self.activation = slots, activation

    def _relu_weight(self) -> None:
        if self.activation == PER_SLOT:
            self.relu = self.add_weight(shape=(self.slots,), initializer="zeros", trainable=False, name="relu")

    def activate(self, z, channels: int | None = None, shared: str | int | None = None):
        """Each slot's activation; ``channels``: z is ``[..., K·channels]``, else ``[B, K, O]``.
        ``shared`` (a ``PER_SLOT`` layer; a graph traced for it): a name, every slot uses that
        activation; an int n, slots 0 … n−1 use sigmoid and the others ReLU (the packed trainer
        keeps its sigmoid trials on the first lanes); None: each slot's ``relu`` weight decides."""
        if self.activation != PER_SLOT:
            return z if self.activation is None else keras.activations.get(self.activation)(z)
        if isinstance(shared, int):
            if 0 < shared < self.slots:
                axis, cut = (-1, shared * channels) if channels else (1, shared)
                head, tail = tf.split(z, [cut, z.shape[axis] - cut], axis=axis)
                return tf.concat([tf.sigmoid(head), tf.nn.relu(tail)], axis=axis)
            shared = "sigmoid" if shared else "relu"
        if shared:
            return keras.activations.get(shared)(z)
        relu = tf.repeat(self.relu, channels) if channels else self.relu[:, None]
        # a blend, not tf.where: exact for a 0/1 weight, fewer ops (a pack of 8: 14.1k against
        # 12.9k trial-samples/s, 2-core AMD EPYC, batch 32). A sigmoid lane whose pre-activation
        # is +inf (a diverged trial) gets NaN instead of 1.
        return relu * tf.nn.relu(z) + (1.0 - relu) * tf.sigmoid(z)


class SlotConv2D(SlotLayer):
    """K ``Conv2D(filters, kernel_size, padding="valid")`` layers, one per slot. Called on
    ``[B, H, W, C]`` (one image stream for every slot: shared batches, evaluation) instead of
    ``[B, H, W, K·C]``, it computes all slots as one ``conv2d`` with K·filters outputs."""

    def __init__(self, slots: int, filters: int, kernel_size: int, activation=None,
                 formulation: str | None = None, **kwargs):
        super().__init__(slots, activation, **kwargs)
        if formulation is not None and formulation not in FORMULATIONS:
            raise ValueError(f"formulation={formulation}: one of {', '.join(FORMULATIONS)}")
        self.filters, self.kernel_size, self.formulation = filters, kernel_size, formulation

    def build(self, input_shape):
        k, size = self.slots, self.kernel_size
        self.cin = input_shape[-1] // k
        if self.formulation is None:
            self.formulation = default_formulation(k, self.cin, bool(tf.config.list_logical_devices("GPU")))
        if self.formulation == "depthwise" and self.cin != 1:
            raise ValueError(f"formulation=depthwise needs one input channel per slot, not {self.cin}")
        self.kernel = self.add_weight(shape=(k, size, size, self.cin, self.filters), name="kernel")
        self.bias = self.add_weight(shape=(k, self.filters), initializer="zeros", name="bias")
        self._relu_weight()

    def call(self, x, shared_activation: str | int | None = None):
        k, kernel = self.slots, self.kernel
        _, kh, kw, cin, cout = kernel.shape
        one_stream = k > 1 and x.shape[-1] == cin  # every slot's input is the same images
        if self.formulation == "depthwise" and not one_stream:
            filters = tf.reshape(tf.transpose(kernel, (1, 2, 0, 3, 4)), (kh, kw, k * cin, cout))
            h = tf.nn.depthwise_conv2d(x, filters, (1, 1, 1, 1), "VALID")
        elif self.formulation == "grouped" or one_stream:  # one conv2d, K·filters outputs slot-major
            filters = tf.reshape(tf.transpose(kernel, (1, 2, 3, 0, 4)), (kh, kw, cin, k * cout))
            h = tf.nn.conv2d(x, filters, 1, "VALID")
        elif self.formulation == "patches":
            patches = tf.image.extract_patches(x, (1, kh, kw, 1), (1, 1, 1, 1), (1, 1, 1, 1), "VALID")
            _, ho, wo, _ = patches.shape
            patches = tf.reshape(patches, (-1, ho, wo, kh * kw, k, cin))  # patch element, then channel
            h = tf.einsum("bhwpkc,kpco->bhwko", patches, tf.reshape(kernel, (k, kh * kw, cin, cout)))
            h = tf.reshape(h, (-1, ho, wo, k * cout))
        elif k == 1:
            h = tf.nn.conv2d(x, kernel[0], 1, "VALID")
        else:
            h = tf.concat([tf.nn.conv2d(part, kernel[j], 1, "VALID")
                           for j, part in enumerate(tf.split(x, k, axis=-1))], axis=-1)
        return self.activate(tf.nn.bias_add(h, tf.reshape(self.bias, (-1,))), cout, shared_activation)


class SlotFlatten(layers.Layer):
    """``[B, H, W, K·C]`` -> ``[B, K, H·W·C]``: each slot's features in Keras' ``Flatten`` order."""

    def __init__(self, slots: int, **kwargs):
        super().__init__(**kwargs)
        self.slots = slots

    def call(self, x):
        _, h, w, kc = x.shape
        c = kc // self.slots
        if self.slots == 1:
            return tf.reshape(x, (-1, 1, h * w * c))
        return tf.reshape(tf.transpose(tf.reshape(x, (-1, h, w, self.slots, c)), (0, 3, 1, 2, 4)),
                          (-1, self.slots, h * w * c))


class SlotDense(SlotLayer):
    """K ``Dense(units)`` layers, one per slot: ``[B, K, I]`` -> ``[B, K, units]``."""

    def __init__(self, slots: int, units: int, activation=None, **kwargs):
        super().__init__(slots, activation, **kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(self.slots, input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.slots, self.units), initializer="zeros", name="bias")
        self._relu_weight()

    def call(self, x, shared_activation: str | int | None = None):
        if self.slots == 1:  # one matmul: the einsum's batched form costs a pack of one ~10 %
            z = tf.expand_dims(tf.matmul(x[:, 0], self.kernel[0]) + self.bias[0], 1)
        else:
            z = tf.einsum("bki,kio->bko", x, self.kernel) + self.bias
        return self.activate(z, None, shared_activation)


def call_slots(model: keras.Sequential, x, shared_activation: str | int | None = None):
    """``model`` (``build_lenet(..., slots=K)``) on ``x``, every slot layer given
    ``shared_activation`` (:meth:`SlotLayer.activate`; None: each slot's ``relu`` weight decides)."""
    for layer in model.layers:
        x = layer(x, shared_activation=shared_activation) if isinstance(layer, SlotLayer) else layer(x)
    return x
