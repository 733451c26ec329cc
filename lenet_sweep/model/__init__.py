"""The models this project ships, as Keras Sequential models built from the ``model`` config group:
LeNet-5 (``model=lenet``, the default) and a multilayer perceptron (``model=mlp``). Each is a
``model._target_`` builder ``(model_cfg, input_shape) -> keras.Model`` (:mod:`lenet_sweep.builders`).
Knows nothing of MLflow or Optuna."""

from __future__ import annotations

from functools import partial
from typing import Sequence

from lenet_sweep.quiet import import_tensorflow

import_tensorflow()  # first: TensorFlow's C++ start-up lines filtered (lenet_sweep.quiet)
import keras  # noqa: E402
from keras import layers


def _name(value) -> str:
    return getattr(value, "value", value)  # an Enum from the structured config, or a plain str


def build_lenet(model_cfg, input_shape=(28, 28, 1), slots: int | None = None,
                formulation: str | Sequence[str | None] | None = None) -> keras.Sequential:
    """LeNet-5 from the model config. ``slots=K``: K of them fused into one model
    (:mod:`lenet_sweep.model.slot_layers`) taking ``[B, H, W, K·C]`` (slot k's images on channels
    k·C … k·C + C − 1) and giving each slot's logits ``[B, K, classes]`` (the trainer applies
    ``output_activation``, as Keras' loss reads the logits under a sigmoid or softmax output), the
    hidden activation chosen per slot by each layer's ``relu`` weight; ``trainable_weights[i][k]``
    is slot k's ``weights[i]`` of the plain model. ``formulation``: the slot convolutions', one for
    all or one per convolution (None: :func:`~lenet_sweep.model.slot_layers.default_formulation`)."""
    hidden, output = _name(model_cfg.activation), _name(model_cfg.output_activation)
    conv, dense, flatten = layers.Conv2D, layers.Dense, layers.Flatten
    if slots is not None:
        from lenet_sweep.model import slot_layers as fused

        conv = partial(fused.SlotConv2D, slots)
        dense, flatten = partial(fused.SlotDense, slots), partial(fused.SlotFlatten, slots)
        input_shape, hidden, output = (*input_shape[:-1], slots * input_shape[-1]), fused.PER_SLOT, None
    per_conv = [formulation] * len(model_cfg.conv_filters) if formulation is None or isinstance(
        formulation, str) else list(formulation)
    stack = [keras.Input(shape=input_shape)]
    for filters, form in zip(model_cfg.conv_filters, per_conv, strict=True):
        extra = {} if slots is None else {"formulation": form}
        stack += [conv(filters, kernel_size=model_cfg.kernel_size, activation=hidden, **extra),
                  layers.MaxPool2D(pool_size=model_cfg.pool_size, strides=model_cfg.pool_size)]
    stack.append(flatten())
    stack += [dense(units, activation=hidden) for units in model_cfg.dense_units]
    stack.append(dense(model_cfg.num_classes, activation=output))
    return keras.Sequential(stack, name="lenet" if slots is None else f"lenet_x{slots}")


def build_mlp(model_cfg, input_shape=(28, 28, 1)) -> keras.Sequential:
    act = _name(model_cfg.activation)
    stack = [keras.Input(shape=input_shape), layers.Flatten()]
    stack += [layers.Dense(units, activation=act) for units in model_cfg.hidden_units]
    stack.append(layers.Dense(model_cfg.num_classes, activation=_name(model_cfg.output_activation)))
    return keras.Sequential(stack, name="mlp")


def shape_table(model: keras.Model) -> list[tuple[str, tuple[int, ...], int]]:
    """(layer name, output shape for one image, parameters) per layer, as the notebook prints."""
    return [(layer.name, (1, *layer.output.shape[1:]), layer.count_params()) for layer in model.layers]


def format_shape_table(model: keras.Model) -> str:
    rows = [f"{name:<16} output shape: {shape}  params: {params}"
            for name, shape, params in shape_table(model)]
    rows.append(f"total params: {model.count_params()}")
    return "\n".join(rows)
