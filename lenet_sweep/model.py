"""The models this project ships, as Keras Sequential models built from the ``model`` config group:
LeNet-5 (``model=lenet``, the default) and a multilayer perceptron (``model=mlp``). Each is a
``model._target_`` builder ``(model_cfg, input_shape) -> keras.Model`` (:mod:`lenet_sweep.builders`).
Knows nothing of MLflow or Optuna."""

from __future__ import annotations

from lenet_sweep.quiet import import_tensorflow

import_tensorflow()  # first: TensorFlow's C++ start-up lines filtered (lenet_sweep.quiet)
import keras  # noqa: E402
from keras import layers


def _name(value) -> str:
    return getattr(value, "value", value)  # an Enum from the structured config, or a plain str


def build_lenet(model_cfg, input_shape=(28, 28, 1)) -> keras.Sequential:
    act = _name(model_cfg.activation)
    stack = [keras.Input(shape=input_shape)]
    for filters in model_cfg.conv_filters:
        stack += [
            layers.Conv2D(filters, kernel_size=model_cfg.kernel_size, activation=act),
            layers.MaxPool2D(pool_size=model_cfg.pool_size, strides=model_cfg.pool_size),
        ]
    stack.append(layers.Flatten())
    stack += [layers.Dense(units, activation=act) for units in model_cfg.dense_units]
    stack.append(layers.Dense(model_cfg.num_classes, activation=_name(model_cfg.output_activation)))
    return keras.Sequential(stack, name="lenet")


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
