"""A finished run's model in MLflow's Keras format, in the model registry, and the ``champion`` alias.

No retraining: the model is rebuilt from the run's own record — the resolved ``config.yaml``
artifact gives the architecture (its ``model._target_``, :mod:`lenet_sweep.builders`; the run's
``input_shape`` tag the image shape), ``lenet.weights.h5`` the weights — and logged with
``mlflow.keras`` as a LoggedModel of that run (``models:/<model_id>``).

The served model has one contract for every version, whatever its run trained on: **a batch of
raw 0-255 pixels**, float32 of shape (N, 28, 28, 1) (JSON integers are cast), **-> 10 class
probabilities** (float32, rows sum to 1; a run of another data or model builder: its image shape and
classes, in the signature). A run trained with ``data.normalize=true`` gets a Normalization layer in front (x / 255, the same division the run's data went through); a sigmoid
output layer (the notebook's) is followed by ``softmax(log_sigmoid(z))`` = sigmoid(z) / sum (rows sum
to 1, classes ranked as the run's sigmoid ranks them), so the classes are the run's own. Clients never change when
the ``champion`` alias moves between versions.

``register`` creates one version per run (or reuses the version that already holds that run's
model), tags it (``run_id``, ``test_accuracy``, and ``study_name`` / ``trial_number`` for a sweep's
winner), and moves ``champion`` to it only when its test accuracy beats the current champion's on the
same test set (the challenger gate: same test files and ``data.test_limit``; a version tested on
other images leaves the alias, decision ``other test set``). The decision is logged on a run (tags ``registry.*``, metrics
``registry.challenger_test_accuracy``, ``registry.champion_test_accuracy``, ``registry_seconds``)
and printed in one line.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lenet_sweep import tracking

ALIAS = "champion"
MODEL_NAME = "model"  # the LoggedModel's name in its run
WEIGHTS, CONFIG = "lenet.weights.h5", "config.yaml"


class RegistryError(RuntimeError):
    """A run that cannot be registered (no weights, no config, no test accuracy)."""


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    model_uri: str
    test_accuracy: float
    champion: str  # the version that holds the alias afterwards
    previous: str | None  # the version that held it before
    previous_accuracy: float | None
    decision: str  # first | promoted | kept | already champion | other test set
    seconds: float = 0.0
    test_sets: str = ""  # decision "other test set": how the two test sets differ

    def line(self) -> str:
        who = f"{self.name} version {self.version} (run {self.run_id}, test_accuracy={self.test_accuracy:.4f})"
        if self.decision == "first":
            verdict = f"first champion: @{ALIAS} -> version {self.version}"
        elif self.decision == "already champion":
            verdict = f"is already @{ALIAS}"
        elif self.decision == "other test set":
            verdict = (f"was tested on another test set than champion version {self.previous} "
                       f"({self.test_sets}): accuracies not compared, @{ALIAS} stays version {self.previous}")
        else:
            beats = "beats" if self.decision == "promoted" else "does not beat"
            moved = (f"@{ALIAS} -> version {self.version}" if self.decision == "promoted"
                     else f"@{ALIAS} stays version {self.previous}")
            verdict = (f"{beats} champion version {self.previous} "
                       f"(test_accuracy={self.previous_accuracy:.4f}): {moved}")
        return f"[registry] {who} {verdict} ({self.seconds:.1f} s)"


# -- the model -----------------------------------------------------------------------------------

def serving_model(cfg: DictConfig, weights: str | Path, input_shape: tuple[int, ...] = (28, 28, 1)):
    """The run's network (built by its ``model._target_``) with its weights, taking raw pixels (as
    the run's data builder returned them) and giving probabilities."""
    from lenet_sweep import builders
    from lenet_sweep.quiet import import_tensorflow

    import_tensorflow()  # first: TensorFlow's start-up lines filtered
    import keras
    from keras import layers

    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True))
    sigmoid_out = model_cfg.get("output_activation") == "sigmoid"
    if sigmoid_out:  # the same weights; the head below turns z into sigmoid(z) / sum
        model_cfg.output_activation = "linear"
    net = builders.build_model(model_cfg, input_shape)
    net.load_weights(str(weights))
    stack = [keras.Input(shape=input_shape, name="pixels")]
    if cfg.data.normalize:  # (x - 0) / sqrt(255^2): the division data.split applies, to the bit
        stack.append(layers.Normalization(mean=0.0, variance=255.0 ** 2, name="scale_0_255"))
    stack.append(net)
    if sigmoid_out:
        stack += [layers.Activation("log_sigmoid", name="log_sigmoid"),
                  layers.Activation("softmax", name="renormalise")]
    return keras.Sequential(stack, name=f"{net.name}_serving")


def signature(input_shape: tuple[int, ...] = (28, 28, 1), classes: int = 10):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]))


def example_images(data_cfg=None, n: int = 2, input_shape: tuple[int, ...] = (28, 28, 1)) -> np.ndarray:
    """The first ``n`` Fashion-MNIST test images as raw pixels, float32 (n, 28, 28, 1); zeros when
    the data is not on this machine or the run's data is another builder's."""
    from lenet_sweep import builders, data
    from lenet_sweep.config import FASHION_MNIST

    try:
        if builders.target(data_cfg, "data") != FASHION_MNIST or tuple(input_shape) != (28, 28, 1):
            raise data.DataError("not Fashion-MNIST")
        folder = data.find_dir(getattr(data_cfg, "dir", None), download=False)
        name = "t10k-images-idx3-ubyte.gz"
        images = data.read_idx(folder / name, data.SHA256[name])[:n]
    except data.DataError:
        images = np.zeros((n, *input_shape), np.uint8)
    return images.reshape(-1, *input_shape).astype(np.float32)


def input_shape(run) -> tuple[int, ...]:
    """One image's shape as the run's model took it (its ``input_shape`` tag; runs recorded before
    the tag: Fashion-MNIST's)."""
    from lenet_sweep.provenance import INPUT_SHAPE

    tag = run.data.tags.get(INPUT_SHAPE)
    return tuple(int(d) for d in tag.split(",")) if tag else (28, 28, 1)


def _requirements() -> list[str]:
    """Pinned as installed: saves MLflow's requirement inference (a model load in a subprocess)."""
    import importlib.metadata as md

    return [f"{p}=={md.version(p)}" for p in ("mlflow", "keras", "tensorflow", "numpy")]


def download(client: MlflowClient, run_id: str, path: str, dst: str) -> str:
    """One artifact of the run into ``dst`` (without MLflow's progress bar); RegistryError if the
    run has none."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return client.download_artifacts(run_id, path, dst)
    except Exception as exc:
        raise RegistryError(f"run {run_id} has no {path} artifact ({type(exc).__name__})") from None
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def run_config(client: MlflowClient, run_id: str, dst: str) -> DictConfig:
    """The run's resolved config, as it logged it (``config.yaml``)."""
    return OmegaConf.load(download(client, run_id, CONFIG, dst))


class _KerasFlavor:
    """``mlflow.keras`` for ``Model.log``, with the model folder made first: MLflow 3.17's Keras
    ``save_model`` writes the input example before it creates the folder (mlflow/mlflow#16183)."""

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path, **kwargs):
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        return mlflow.keras.save_model(path=path, **kwargs)


def logged_model_id(client: MlflowClient, run_id: str) -> str | None:
    """The model this module logged for the run before (complete: READY), if any."""
    run = client.get_run(run_id)
    for output in (run.outputs.model_outputs if run.outputs else []):
        model = client.get_logged_model(output.model_id)
        if model.name == MODEL_NAME and model.tags.get("lenet_sweep.serving") == "raw_pixels" \
                and str(getattr(model.status, "name", model.status)).endswith("READY"):
            return model.model_id
    return None


def log_model(client: MlflowClient, run_id: str) -> str:
    """Log the run's model in MLflow's Keras format (once per run); returns its ``models:/`` URI."""
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from lenet_sweep.quiet import startup_lines_filtered

    if (model_id := logged_model_id(client, run_id)) is not None:
        return f"models:/{model_id}"
    run = client.get_run(run_id)
    metrics = run.data.metrics
    if "test_accuracy" not in metrics:
        raise RegistryError(f"run {run_id} has no test_accuracy: it did not finish training")
    step = max((m.step for m in client.get_metric_history(run_id, "test_accuracy")), default=0)
    # the LoggedModel goes to its run's experiment (MLflow puts it in the active one, else in
    # MLFLOW_EXPERIMENT_ID's, else in "Default"): its Models tab lists it
    with tempfile.TemporaryDirectory() as tmp, _use_tracking_uri(client.tracking_uri), \
            _environment(MLFLOW_EXPERIMENT_ID=run.info.experiment_id, MLFLOW_EXPERIMENT_NAME=None):
        cfg = run_config(client, run_id, tmp)
        weights = download(client, run_id, WEIGHTS, tmp)
        # TensorFlow's start-up lines (a sweeper imports it here) and the progress bar of MLflow's
        # check that the input example predicts stay off the terminal
        shape = input_shape(run)
        with startup_lines_filtered(), contextlib.redirect_stdout(io.StringIO()):
            model = serving_model(cfg, weights, shape)
            info = Model.log(None, name=MODEL_NAME, flavor=_KerasFlavor, model=model, run_id=run_id,
                             signature=signature(shape, int(model.output_shape[-1])),
                             input_example=example_images(cfg.data, input_shape=shape),
                             pip_requirements=_requirements(), step=step,
                             tags={"lenet_sweep.serving": "raw_pixels"})
    return f"models:/{info.model_id}"


@contextlib.contextmanager
def _environment(**values: str | None):
    """Environment variables set (None: unset) for the block, restored after it."""
    def put(settings: Mapping[str, str | None]) -> None:
        for key, value in settings.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    saved = {k: os.environ.get(k) for k in values}
    put(values)
    try:
        yield
    finally:
        put(saved)


def log_model_at(tracking_uri: str, run_id: str) -> str:
    """:func:`log_model` by URI, for a sweep worker that has TensorFlow loaded (the sweeper hands it
    its winner, so the sweeper never imports TensorFlow). A failure comes back as one line: unpickling
    a Keras or TensorFlow exception in the sweeper would import them after all."""
    try:
        return log_model(MlflowClient(tracking_uri), run_id)
    except Exception as exc:  # noqa: BLE001 - the caller prints it and tags the sweep's run
        raise RegistryError(tracking.error_line(exc, limit=1000)) from None


# -- the registry --------------------------------------------------------------------------------

def _accuracy(client: MlflowClient, version) -> float | None:
    if "test_accuracy" in version.tags:
        return float(version.tags["test_accuracy"])
    if version.run_id:
        return client.get_run(version.run_id).data.metrics.get("test_accuracy")
    return None


def test_set(client: MlflowClient, run_id: str) -> dict[str, str]:
    """What a run's test accuracy was measured on: its test images' and labels' checksums (the
    run's ``test`` dataset input) and ``data.test_limit`` (how many of them)."""
    run = client.get_run(run_id)
    found = {"data.test_limit": run.data.params.get("data.test_limit", "None")}
    for di in (run.inputs.dataset_inputs if run.inputs else []):
        tags = {t.key: t.value for t in di.tags}
        if tags.get("mlflow.data.context") == "test":
            found.update({k: v for k, v in tags.items() if k.startswith("sha256.")})
    return found


def _test_sets_differ(client: MlflowClient, challenger: str, champion: str | None) -> str:
    """'' when both runs were tested on the same images, else how they differ (one phrase)."""
    if champion is None:
        return ""
    try:
        a, b = test_set(client, challenger), test_set(client, champion)
    except MlflowException:  # the champion's run is gone: nothing to compare
        return ""
    keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
    return "; ".join(f"{k}={a.get(k)} vs {b.get(k)}" if k == "data.test_limit" else f"{k} differs"
                     for k in keys)


def _champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:  # no such alias (yet)
        return None


def _version_of(client: MlflowClient, name: str, model_uri: str):
    """The version that already holds this logged model (a sweep resumed with the same winner)."""
    model_id = model_uri.removeprefix("models:/")
    for version in client.search_model_versions(f"name = '{name}'"):
        if getattr(version, "model_id", None) == model_id or version.source == model_uri:
            return version
    return None


def _version_of_run(client: MlflowClient, name: str, run_id: str):
    """The oldest version of ``name`` registered from run ``run_id``, if any."""
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as exc:  # no such registered model yet
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return min(versions, key=lambda v: int(v.version), default=None)


def register(client: MlflowClient, run_id: str, name: str, tags: Mapping[str, Any] | None = None,
             decision_run_id: str | None = None,
             model_logger: Callable[[str], str] | None = None) -> Registration:
    """Register the run's model under ``name`` and apply the champion gate (module docstring);
    the decision goes to ``decision_run_id`` (default: the run itself). ``model_logger(run_id)``
    logs the model and returns its ``models:/`` URI (default: :func:`log_model` in this process)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(client.tracking_uri):  # MLflow resolves models:/ URIs with the global one
        return _register(client, run_id, name, tags, decision_run_id,
                         model_logger or (lambda rid: log_model(client, rid)))


def _register(client: MlflowClient, run_id: str, name: str, tags: Mapping[str, Any] | None,
              decision_run_id: str | None, model_logger: Callable[[str], str]) -> Registration:
    start = time.perf_counter()
    version = _version_of_run(client, name, run_id)  # registered before: by another sweeper of the
    # study, or by this sweep before it was resumed; one run is one version
    model_uri = version.source if version is not None else model_logger(run_id)
    accuracy = float(client.get_run(run_id).data.metrics["test_accuracy"])
    try:
        client.create_registered_model(name, description="LeNet-5 on Fashion-MNIST (lenet_sweep): "
                                       "raw 0-255 pixels (N, 28, 28, 1) -> 10 class probabilities")
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = version or _version_of(client, name, model_uri)
    if version is None:
        version_tags = {"run_id": run_id, "test_accuracy": accuracy, **(tags or {})}
        version = client.create_model_version(
            name, model_uri, run_id=run_id, model_id=model_uri.removeprefix("models:/"),
            tags={k: str(v) for k, v in version_tags.items()})
    champion = _champion(client, name)
    previous = champion.version if champion is not None else None
    previous_accuracy = _accuracy(client, champion) if champion is not None else None
    differ = "" if champion is None or str(champion.version) == str(version.version) \
        else _test_sets_differ(client, run_id, champion.run_id)
    if champion is None:
        decision = "first"
    elif str(champion.version) == str(version.version):
        decision = "already champion"
    elif differ:  # accuracies on different images say nothing about which model is better
        decision = "other test set"
    elif previous_accuracy is None or accuracy > previous_accuracy:
        decision = "promoted"
    else:
        decision = "kept"
    if decision in ("first", "promoted"):
        client.set_registered_model_alias(name, ALIAS, version.version)
    result = Registration(name, str(version.version), run_id, model_uri, accuracy,
                          str(version.version) if decision in ("first", "promoted") else str(previous),
                          None if previous is None else str(previous), previous_accuracy, decision,
                          test_sets=differ)
    result.seconds = time.perf_counter() - start
    _log_decision(client, decision_run_id or run_id, result)
    print(result.line(), flush=True)
    return result


def _log_decision(client: MlflowClient, run_id: str, r: Registration) -> None:
    tags = {"registry.model": r.name, "registry.version": r.version, "registry.model_uri": r.model_uri,
            "registry.decision": r.decision, "registry.champion": r.champion,
            "registry.previous_champion": r.previous or "none", "registry.line": r.line()}
    metrics = {"registry.challenger_test_accuracy": r.test_accuracy, "registry_seconds": r.seconds}
    if r.previous_accuracy is not None:
        metrics["registry.champion_test_accuracy"] = r.previous_accuracy
    tracking.log_params(client, run_id, {}, tags)
    tracking.log_metrics(client, run_id, metrics)


def _safely(client: MlflowClient, decision_run_id: str, what: str, call) -> Registration | None:
    """Registration never fails what asked for it: a failure is one printed line and a tag."""
    try:
        return call()
    except Exception as exc:
        line = tracking.error_line(exc, limit=1000)
        print(f"[registry] warning: {what} not registered: {line}", flush=True)
        try:
            client.set_tag(decision_run_id, "registry.error", line)
        except Exception:
            pass
        return None


def register_sweep_winner(client: MlflowClient, parent_id: str, best_trial, study_name: str,
                          mlflow_cfg, model_logger: Callable[[str], str] | None = None) -> Registration | None:
    """At the end of a sweep: register the best trial's run, gate ``champion``, log the decision on
    the sweep's parent run. Never raises (a completed sweep stays completed). ``model_logger``: a
    sweep worker's :func:`log_model_at` (the sweeper itself never imports TensorFlow)."""
    run_id = best_trial.user_attrs.get("mlflow_run_id")
    name = mlflow_cfg.get("registered_model") or "lenet_sweep"
    tags = {"study_name": study_name, "trial_number": best_trial.number}
    return _safely(client, parent_id, f"the best trial {best_trial.number} (run {run_id})",
                   lambda: register(client, run_id, name, tags, decision_run_id=parent_id,
                                    model_logger=model_logger))


def register_if_asked(client: MlflowClient, run_id: str, cfg: DictConfig) -> Registration | None:
    """A single run with ``mlflow.register=true`` registers itself. A sweep's trials do not (the
    sweep registers its winner), nor does a run that raised."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if not cfg.mlflow.get("register", False) or in_sweep:
        return None
    name = cfg.mlflow.get("registered_model") or "lenet_sweep"
    return _safely(client, run_id, f"run {run_id}", lambda: register(client, run_id, name))
