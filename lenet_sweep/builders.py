"""Your own model and data: the ``_target_`` of the ``model`` and ``data`` groups, looked up with
Hydra's ``get_method`` and called.

- ``model._target_``: ``builder(model_cfg, input_shape) -> keras.Model``, given the model group's
  resolved keys (enums as their names) and one image's shape (``(28, 28, 1)`` for Fashion-MNIST). The
  model ends in class probabilities (softmax; or sigmoid with ``output_activation: sigmoid``, which the
  served model renormalises): training uses ``sparse_categorical_crossentropy`` on them.
- ``data._target_``: ``builder(data_cfg) -> ((x_train, y_train), (x_test, y_test))`` numpy arrays:
  images ``(N, H, W)`` or ``(N, H, W, C)``, integer labels ``(N,)``. The project then applies
  ``data.train_limit``, ``test_limit``, ``validation_split`` and ``normalize`` (:func:`lenet_sweep.data.split`).

:func:`lenet_sweep.config.validate` checks beforehand that the module can be found (without importing
it); a function that is not there, or returns something else, is a ConfigError naming the key here,
before anything trains. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lenet_sweep.config import FASHION_MNIST, LENET, ConfigError

DEFAULTS = {"model": LENET, "data": FASHION_MNIST}
DATA_CONTRACT = ("a data builder returns ((x_train, y_train), (x_test, y_test)): images (N, H, W) or "
                 "(N, H, W, C), integer labels (N,)")


def target(node: Any, group: str) -> str:
    """The group's ``_target_``; the default builder for a node without one (a record of a run made
    before the groups had one, or a plain object)."""
    return getattr(node, "_target_", None) or DEFAULTS[group]


def _error(group: str, text: str) -> ConfigError:
    error = ConfigError(text)
    error.key = f"{group}._target_"
    return error


@contextlib.contextmanager
def _hydra_quiet():
    """``get_method`` logs its failure as an error before raising it: the raised one line is enough."""
    logger = logging.getLogger("hydra.utils")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def resolve(node: Any, group: str) -> Callable:
    """The function ``{group}._target_`` names (imported now)."""
    from hydra.utils import get_method

    name = target(node, group)
    try:
        with _hydra_quiet():
            return get_method(name)
    except Exception as exc:
        reason = " ".join(str(exc).replace(f"Error loading '{name}':", "").split())
        raise _error(group, f"{group}._target_={name}: cannot be loaded: {reason}") from None


#: how each group's builder is called
CALLS = {"model": "builder(model_cfg, input_shape)", "data": "builder(data_cfg)"}


def _call(node: Any, group: str, *args: Any) -> Any:
    """``{group}._target_(*args)``; a function that cannot take them is a ConfigError, not a traceback."""
    fn, name = resolve(node, group), target(node, group)
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as exc:
        raise _error(group, f"{group}._target_={name} cannot be called as {CALLS[group]}: {exc}") from None
    except ValueError:  # no signature to read (a builtin): just call it
        pass
    return fn(*args)


def _plain(node: Any) -> Any:
    """A config node as plain resolved values (enums as their names), for a user's function."""
    if not isinstance(node, DictConfig):
        return node
    return OmegaConf.create(OmegaConf.to_container(node, resolve=True, enum_to_str=True))


def build_model(model_cfg: Any, input_shape: tuple[int, ...]):
    """``model._target_(model_cfg, input_shape)``, checked to be a Keras model (built)."""
    import keras

    name = target(model_cfg, "model")
    model = _call(model_cfg, "model", _plain(model_cfg), tuple(int(d) for d in input_shape))
    if not isinstance(model, keras.Model):
        raise _error("model", f"model._target_={name} returned {type(model).__name__}, not a keras.Model "
                              "(a model builder is (model_cfg, input_shape) -> keras.Model)")
    if not model.built:
        model.build((None, *input_shape))
    return model


def load_data(data_cfg: Any) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``data._target_(data_cfg)``, checked: ``((x_train, y_train), (x_test, y_test))`` numpy arrays."""
    name = target(data_cfg, "data")
    returned = _call(data_cfg, "data", _plain(data_cfg))

    def fail(what: str):
        raise _error("data", f"data._target_={name} returned {what}; {DATA_CONTRACT}")

    try:
        (x_train, y_train), (x_test, y_test) = returned
        x_train, y_train, x_test, y_test = (np.asarray(a) for a in (x_train, y_train, x_test, y_test))
    except (TypeError, ValueError):
        fail(f"a {type(returned).__name__}")
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim not in (3, 4) or not np.issubdtype(x.dtype, np.number):
            fail(f"x_{part} of shape {x.shape} and dtype {x.dtype}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x) or not len(y):
            fail(f"y_{part} of shape {y.shape} and dtype {y.dtype} for {len(x)} images")
        if y.min() < 0:
            fail(f"y_{part} with a negative label")
    if x_train.shape[1:] != x_test.shape[1:]:
        fail(f"train images {x_train.shape[1:]} and test images {x_test.shape[1:]} of other shapes")
    return (x_train, y_train), (x_test, y_test)
