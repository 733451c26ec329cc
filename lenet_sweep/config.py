"""Config schemas (registered in Hydra's ConfigStore) and the value checks types can't express.

Types, enum values and unknown keys are rejected by Hydra/OmegaConf at compose time. Ranges are
checked by :func:`validate`, which runs before TensorFlow is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from collections.abc import Mapping, Sequence
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

#: Metrics a run produces; ``objective`` names one of them, or a list of them (several objectives).
#: ``train_seconds``: its epochs' seconds summed; ``num_params``: the model's parameter count.
OBJECTIVE_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss", "test_accuracy", "test_loss",
                     "train_seconds", "num_params")


class UserError(Exception):
    """A mistake the user can fix; its message is one line that says how."""


class ConfigError(UserError, ValueError):
    """A config value out of its range; the message names the key and a valid example, ``key`` the key
    itself where one key is to blame (a search-space check tells its entry's errors from others)."""

    key: Optional[str] = None


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; training stopped at that epoch. Defined here, not in
    :mod:`lenet_sweep.training.train`: a sweeper unpickling a failed trial's error must not import TensorFlow."""


class Activation(Enum):
    sigmoid = "sigmoid"
    relu = "relu"


class OutputActivation(Enum):
    sigmoid = "sigmoid"  # the notebook's; Keras' loss reads the logits under it: softmax cross-entropy
    softmax = "softmax"


#: the default builders (``model._target_``, ``data._target_``; :mod:`lenet_sweep.builders`)
LENET = "lenet_sweep.model.build_lenet"
FASHION_MNIST = "lenet_sweep.data.fashion_mnist"


@dataclass
class LeNetConfig:
    _target_: str = LENET  # builder(model_cfg, input_shape) -> keras.Model (lenet_sweep.builders)
    name: str = "lenet"
    activation: Activation = Activation.sigmoid
    output_activation: OutputActivation = OutputActivation.sigmoid
    conv_filters: List[int] = field(default_factory=lambda: [6, 16])
    kernel_size: int = 5
    pool_size: int = 2
    dense_units: List[int] = field(default_factory=lambda: [120, 84])
    num_classes: int = 10


@dataclass
class MLPConfig:
    """A multilayer perceptron (``model=mlp``): Flatten, a Dense layer per ``hidden_units`` entry, the
    output layer."""

    _target_: str = "lenet_sweep.model.build_mlp"
    name: str = "mlp"
    activation: Activation = Activation.relu
    output_activation: OutputActivation = OutputActivation.softmax
    hidden_units: List[int] = field(default_factory=lambda: [256, 128])
    num_classes: int = 10


@dataclass
class SGDConfig:
    _target_: str = "keras.optimizers.SGD"  # instantiated by Hydra; lr is passed as learning_rate
    name: str = "sgd"
    lr: float = 0.9
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class AdamConfig:
    _target_: str = "keras.optimizers.Adam"
    name: str = "adam"
    lr: float = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7


@dataclass
class DataConfig:
    _target_: str = FASHION_MNIST  # builder(data_cfg) -> ((x_train, y_train), (x_test, y_test))
    name: str = "fashion_mnist"
    dir: Optional[str] = None  # null: search the usual places (see lenet_sweep.data)
    batch_size: int = 32
    validation_split: float = 0.1
    normalize: bool = False  # false: raw 0-255 pixels, as the notebook
    train_limit: Optional[int] = None  # first N training images (before the validation split)
    test_limit: Optional[int] = None  # first N test images


@dataclass
class TrainerConfig:
    epochs: int = 10
    # Keras progress: 0 silent, 1 bar, 2 one line per epoch; null: 1 for a single run, 0 in a sweep's
    # trials (the sweep prints one line per trial; trainer.verbose=1 brings their bars back)
    verbose: Optional[int] = None
    fast: bool = True  # in-graph training loop over in-memory tensors; false: Keras fit on tf.data
    steps_per_execution: int = 100  # batches per compiled call; batch callbacks/progress bar update this often
    jit_compile: Optional[bool] = None  # XLA; null: the fast path measures which is faster here (README)
    # Batch orders from a stream other than the seed's (fast path only): the orders of
    # np.random.default_rng(stream_seed) from its stream_position-th on. A packed sweep with
    # hydra.launcher.batches=shared sets both on each trial (the pack's stream, the orders drawn before
    # the trial entered), so its rerun trains on the batches it trained on. null: from `seed`.
    stream_seed: Optional[int] = None
    stream_position: Optional[int] = None  # null: 0 (a shared-batches trial's: set when it enters its slot)
    # Resuming (lenet_sweep/training/checkpoint.py). At each epoch end the run keeps checkpoint.npz in its job
    # folder (Hydra's output folder: outputs/DATE/TIME, a sweep trial's <sweep dir>/<number>), rewritten
    # atomically. It is removed when the run ends (completed, pruned, or diverged: a resume would
    # diverge again) unless keep_checkpoint, and kept when the run was interrupted (Ctrl-C, SIGTERM, a
    # kill) or failed otherwise (the MLflow store, a crash): that is what a resume continues.
    checkpoint: bool = True  # false: write none
    checkpoint_dir: Optional[str] = None  # null: the job's Hydra output folder (none outside Hydra)
    keep_checkpoint: bool = False  # true: the last checkpoint stays when the run ends
    # The job folder of an interrupted run (as Hydra printed it, e.g. outputs/2025-01-31/12-00-00) or
    # its checkpoint.npz: this run continues it from its last completed epoch, into the SAME MLflow
    # run, and ends with exactly the metrics an uninterrupted run would have (same machine). Keep every
    # other key as it was (only mlflow.*, data.dir, trainer.verbose and these checkpoint keys may
    # change). The new run gets its own Hydra folder and carries the checkpoint on there: resume a
    # second interruption from that folder. A sweep's retried trial resumes from its failed
    # attempt's folder by itself (lenet_sweep.trial.TrialPayload.resume_from).
    resume: Optional[str] = None


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = None  # null: sqlite:///<project>/mlflow.db, artifacts in <project>/mlruns
    experiment_name: str = "lenet_sweep"
    run_name: Optional[str] = None
    register: bool = False  # register this run's model (README: From sweep to served model)
    registered_model: str = "lenet_sweep"  # registered model name; a sweep registers its winner here


@dataclass
class Config:
    model: Any = MISSING
    optimizer: Any = MISSING
    data: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    seed: int = 42
    # metric returned to a sweeper, one of OBJECTIVE_METRICS; a list of them: several objectives
    objective: Any = "val_accuracy"


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="model", name="base_lenet", node=LeNetConfig)
    cs.store(group="model", name="base_mlp", node=MLPConfig)
    cs.store(group="optimizer", name="base_sgd", node=SGDConfig)
    cs.store(group="optimizer", name="base_adam", node=AdamConfig)
    cs.store(group="data", name="base_fashion_mnist", node=DataConfig)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{optimizer: {lr: x}}`` -> ``{"optimizer.lr": x}`` (lists stay values, empty mappings vanish;
    keys already dotted stay as they are): the one flattener of configs, params and search spaces."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check(ok: bool, key: str, value: Any, rule: str, example: str) -> None:
    if not ok:
        raise _keyed(ConfigError(f"{key}={value} is invalid: {rule} (for example {key}={example})"), key)


#: optimizer group option -> its schema (its ``_target_`` default: the Keras class it builds)
#: ``hydra.launcher.batches``: packed trials' batch orders, each its own or one stream per pack
#: (lenet_sweep.model.packed trains either; the sweep plan checks the setting)
BATCHES = ("independent", "shared")

OPTIMIZERS = {"sgd": SGDConfig, "adam": AdamConfig}


def _check_optimizer_name(opt: DictConfig) -> None:
    """``optimizer._target_`` builds the optimizer; ``optimizer.name`` only labels it (MLflow param,
    report). The name of another group (``optimizer.name=adam`` on the sgd group, or an unknown name on
    a Keras class this project ships a group for) would label runs with an optimizer they did not
    train. A group the user adds (its own ``_target_`` and ``name``) passes."""
    targets = {n: schema._target_ for n, schema in OPTIMIZERS.items()}
    named_for = next((n for n, t in targets.items() if t == opt.get("_target_")), None)
    if (opt.name in targets and named_for != opt.name) or (named_for is not None and opt.name != named_for):
        choices = ", ".join(f"optimizer={n}" for n in OPTIMIZERS)
        raise ConfigError(f"optimizer.name={opt.name} is invalid: choose the optimizer with the group "
                          f"({choices}), not with optimizer.name")


def objective_text(names: Sequence[Any]) -> str:
    """``objective``'s value as the command line writes it: one name, or ``[a,b]``."""
    return str(names[0]) if len(names) == 1 else f"[{','.join(map(str, names))}]"


def objectives(objective: Any) -> list[str]:
    """``objective`` as a list of metric names (one, or several); a ConfigError names the key."""
    names = list(objective) if isinstance(objective, Sequence) and not isinstance(objective, str) else [objective]
    shown = objective_text(names)
    for name in names:
        _check(name in OBJECTIVE_METRICS, "objective", shown,
               f"{name} is not a metric of a run, name one of {', '.join(OBJECTIVE_METRICS)} or a list "
               "of them", "[val_accuracy,train_seconds]" if len(names) > 1 else "val_accuracy")
    _check(bool(names) and len(names) == len(set(names)), "objective", shown, "name each metric once, at least one",
           "[val_accuracy,train_seconds]")
    return names


def objective_value(metrics: dict[str, float], name) -> float | tuple[float, ...]:
    """The value returned to a sweeper: the metric ``name`` names; a tuple for several names
    (several objectives, in their order)."""
    names = objectives(name)
    for one in names:
        if one not in metrics:
            raise ConfigError(f"objective={one} names no metric of this run; "
                              f"one of: {', '.join(sorted(metrics))}")
    values = tuple(float(metrics[one]) for one in names)
    return values if len(values) > 1 else values[0]


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key whose value is out of range."""
    opt, data = cfg.optimizer, cfg.data
    _check_optimizer_name(opt)
    _check(math.isfinite(opt.lr) and opt.lr > 0, "optimizer.lr", opt.lr, "must be > 0", "0.1")
    if "momentum" in opt:
        m = opt.momentum
        _check(0 <= m < 1, "optimizer.momentum", m, "must be in [0, 1)", "0.9")
    _check(cfg.trainer.epochs >= 1, "trainer.epochs", cfg.trainer.epochs, "must be >= 1", "10")
    tc = cfg.trainer
    if tc.stream_position is not None:
        _check(tc.stream_position >= 0, "trainer.stream_position", tc.stream_position, "must be >= 0", "0")
        _check(tc.stream_seed is not None, "trainer.stream_position", tc.stream_position,
               "counts orders of trainer.stream_seed's stream: set trainer.stream_seed too (or drop it)",
               "0 trainer.stream_seed=42")
    if tc.stream_seed is not None:
        _check(tc.fast, "trainer.stream_seed", tc.stream_seed, "needs trainer.fast=true (Keras fit shuffles "
               "by its own seed); set trainer.fast=true, or drop trainer.stream_seed", "null")
    spe = cfg.trainer.steps_per_execution
    _check(spe >= 1, "trainer.steps_per_execution", spe, "must be >= 1", "100")
    _check(data.batch_size >= 1, "data.batch_size", data.batch_size, "must be >= 1", "32")
    vs = data.validation_split
    _check(0 < vs < 1, "data.validation_split", vs, "must be in (0, 1)", "0.1")
    for key in ("train_limit", "test_limit"):
        n = data[key]
        _check(n is None or n >= 10, f"data.{key}", n, "must be null (all) or >= 10", "2000")
    objectives(cfg.objective)
    for group in ("model", "data"):
        _check_target(cfg[group], group)
    m = cfg.model
    for key, rule, example in (("conv_filters", "every filter count must be >= 1", "[6,16]"),
                               ("dense_units", "every width must be >= 1", "[120,84]"),
                               ("hidden_units", "every width must be >= 1", "[256,128]")):
        if key in m:  # each model config has its own keys
            _check(all(u >= 1 for u in m[key]), f"model.{key}", list(m[key]), rule, example)
    for key, example in (("kernel_size", "5"), ("pool_size", "2")):
        if key in m:
            _check(m[key] >= 1, f"model.{key}", m[key], "must be >= 1", example)
    if "num_classes" in m:
        _check(m.num_classes >= 2, "model.num_classes", m.num_classes, "must be >= 2", "10")


def _check_target(node: DictConfig, group: str) -> None:
    """``model._target_`` / ``data._target_`` names a function as ``module.function`` whose top-level
    module is importable. Found, not imported: importing may load TensorFlow (lenet_sweep.model does),
    which a sweeper never does; the function itself is looked up when the run builds
    (:mod:`lenet_sweep.builders`)."""
    import importlib.util

    target = node.get("_target_")
    key = f"{group}._target_"
    what = "model builder (model_cfg, input_shape) -> keras.Model" if group == "model" else \
        "data builder (data_cfg) -> ((x_train, y_train), (x_test, y_test))"
    if not isinstance(target, str) or "." not in target.strip(".") or ".." in target:
        raise _keyed(ConfigError(f"{key}={target} is invalid: name a {what} as module.function "
                                 f"(for example {key}={LENET if group == 'model' else FASHION_MNIST})"), key)
    top = target.split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise _keyed(ConfigError(f"{key}={target}: no module {top} on the Python path: put the folder "
                                 f"holding {top} on PYTHONPATH (or run from it)"), key)


def _keyed(error: ConfigError, key: str) -> ConfigError:
    error.key = key
    return error
