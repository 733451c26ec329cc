"""Your own model and data (``model._target_``, ``data._target_``): the shipped second model
(``model=mlp``) trains, reruns, sweeps unpacked and registers a model that serves probabilities; the
README's builder and a user's data builder, in a module of their own, are what the run trains on; a bad
``_target_`` is one line. Real CLI subprocesses, real MLflow stores and Optuna journals in tmp."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap

import mlflow.pyfunc
import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from conftest import all_runs, compose_cfg, parents_and_children, run_cli, sweep_args
from lenet_sweep import PROJECT_ROOT, builders, data
from lenet_sweep.config import ConfigError, validate
from lenet_sweep.pack.rules import unpackable

README = PROJECT_ROOT / "README.md"
TINY_MLP = ["model=mlp", "data.train_limit=300", "data.test_limit=200", "trainer.epochs=1",
            "trainer.verbose=0", "data.normalize=true", "optimizer.lr=0.1"]
#: params of model=mlp's default 784 -> 256 -> 128 -> 10
MLP_PARAMS = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
USER_DATA = '''

from lenet_sweep import data


def first_five(data_cfg):  # Fashion-MNIST's classes 0-4 only
    (x, y), (xt, yt) = data.fashion_mnist(data_cfg)
    return (x[y < 5], y[y < 5]), (xt[yt < 5], yt[yt < 5])


def not_a_model(cfg, input_shape):
    return None


def mixed_mlp(cfg, input_shape):  # Keras mixed precision: a bf16 hidden layer, a float32 output
    import keras
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(64, activation="relu", dtype="mixed_bfloat16"),
                             keras.layers.Dense(10, activation="softmax", dtype="float32")])
'''


def readme_builder() -> str:
    """The README's example of a model builder in the user's own module."""
    text = README.read_text()
    section = text[text.index("\n## Your own model and data"):]
    return re.search(r"^```python\n(.*?)^```", section, flags=re.S | re.M).group(1)


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    """``my_models.py``: the README's builder plus a data builder, in a folder of its own."""
    folder = tmp_path_factory.mktemp("user_module")
    (folder / "my_models.py").write_text(readme_builder() + USER_DATA)
    return folder


def test_the_readme_shows_a_five_line_builder():
    assert len(readme_builder().splitlines()) == 5


def test_model_mlp_has_its_own_keys_checked_like_lenets():
    cfg = compose_cfg(["model=mlp", "model.hidden_units=[64]", "model.activation=sigmoid"])
    assert (cfg.model._target_, list(cfg.model.hidden_units)) == ("lenet_sweep.model.build_mlp", [64])
    assert "conv_filters" not in cfg.model
    with pytest.raises(ConfigError, match=r"^model.hidden_units=\[64, 0\] is invalid: every width must be >= 1"):
        validate(compose_cfg(["model=mlp", "model.hidden_units=[64,0]"]))
    with pytest.raises(ConfigCompositionException):  # LeNet's keys are not the MLP's
        compose_cfg(["model=mlp", "model.conv_filters=[6,16]"])


def test_only_the_default_lenet_is_packed():
    assert unpackable(compose_cfg()) is None
    assert unpackable(compose_cfg(["model=mlp"])) == ("model._target_=lenet_sweep.model.build_mlp: packed trials "
                                                      "train the default LeNet (lenet_sweep.model.build_lenet) only")


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """One tiny model=mlp run through the Python API (in this process)."""
    import lenet_sweep

    tmp = tmp_path_factory.mktemp("mlp_run")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return tmp, uri, lenet_sweep.run([*TINY_MLP, f"mlflow.tracking_uri={uri}"])


def test_model_mlp_trains_is_recorded_and_reruns_identically(mlp_run):
    tmp, uri, result = mlp_run
    client = MlflowClient(uri)
    [run] = all_runs(client)
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    params = run.data.params
    assert params["model._target_"] == "lenet_sweep.model.build_mlp" and params["model.hidden_units"] == "[256, 128]"
    assert params["num_params"] == str(MLP_PARAMS)  # the MLP trained, not the LeNet (44426)
    assert run.data.metrics["test_accuracy"] == result.metrics["test_accuracy"] > 0.3  # it learned
    assert run.data.tags["input_shape"] == "28,28,1"

    proc = subprocess.run([sys.executable, "-m", "lenet_sweep.rerun", result.run_id,
                           f"mlflow.tracking_uri={uri}", "trainer.verbose=0"],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[rerun] identical: every metric of the rerun equals the original's" in proc.stdout
    rerun = next(r for r in all_runs(client) if r.data.tags.get("rerun_of") == result.run_id)
    assert rerun.data.params["num_params"] == str(MLP_PARAMS)


@pytest.fixture(scope="module")
def mlp_sweep(tmp_path_factory):
    """A two-trial model=mlp sweep over the default space (model.activation included), asked to pack."""
    tmp = tmp_path_factory.mktemp("mlp_sweep")
    proc = run_cli(sweep_args(tmp, "model=mlp", "data.normalize=true", "hydra.launcher.pack=2",
                              "hydra.sweeper.n_jobs=1", "optimizer.lr=tag(log, interval(0.01, 0.1))",
                              "optimizer.momentum=interval(0.0, 0.5)", n_trials=2, register=True), tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


@pytest.mark.sweep
def test_a_model_mlp_sweep_runs_unpacked_and_its_registered_winner_serves_probabilities(mlp_sweep):
    tmp, proc = mlp_sweep
    assert ("hydra.launcher.pack=2: trials not packed (model._target_=lenet_sweep.model.build_mlp: packed "
            "trials train the default LeNet (lenet_sweep.model.build_lenet) only); one trial per worker") in proc.stdout
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    children = parents_and_children(client)[1]
    assert len(children) == 2 and all("pack" not in c.data.tags for c in children)
    assert all(c.info.status == "FINISHED" and c.data.params["num_params"] == str(MLP_PARAMS) for c in children)
    assert {c.data.params["model.activation"] for c in children} <= {"sigmoid", "relu"}  # the default space's

    champion = client.get_model_version_by_alias("lenet_sweep", "champion")
    best = max(children, key=lambda c: c.data.metrics["val_accuracy"])
    assert champion.run_id == best.info.run_id
    with _use_tracking_uri(uri):
        model = mlflow.pyfunc.load_model("models:/lenet_sweep@champion")
    (_, _), (x, y) = data.load_arrays(data.find_dir(None, download=False))
    x, y = x[:500].reshape(-1, 28, 28, 1).astype(np.float32), y[:500]  # TINY's test images, raw pixels
    probs = model.predict(x)
    assert probs.shape == (500, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # float32 sums
    # the MLP's own weights, built through its _target_: its test accuracy on the same images
    assert np.mean(probs.argmax(axis=1) == y) == pytest.approx(best.data.metrics["test_accuracy"], abs=1e-6)


def test_the_readme_builder_trains_on_the_users_own_data(user_module, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli([*TINY_MLP, "model._target_=my_models.wide_mlp", "data._target_=my_models.first_five",
                    f"mlflow.tracking_uri={uri}"], tmp_path, env={"PYTHONPATH": str(user_module)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = all_runs(MlflowClient(uri))
    assert run.data.params["num_params"] == str(784 * 1024 + 1024 + 1024 * 10 + 10)  # the README's model
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {f"my_models.first_five-{c}" for c in ("training", "validation", "test")}
    (_, _), (_, yt) = data.load_arrays(data.find_dir(None, download=False))
    tags = {t.key: t.value for t in inputs["my_models.first_five-test"].tags}
    assert tags["sha256.y_test"] == hashlib.sha256(yt[yt < 5].tobytes()).hexdigest()  # the arrays it returned
    per_class = sorted(k for k in run.data.metrics if k.startswith("test_accuracy_"))
    assert per_class == [f"test_accuracy_{k}" for k in range(5)]  # only its five classes were tested


def test_a_mixed_precision_model_trains_and_its_run_records_the_precision(user_module, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli([*TINY_MLP, "model._target_=my_models.mixed_mlp", f"mlflow.tracking_uri={uri}"], tmp_path,
                   env={"PYTHONPATH": str(user_module)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = all_runs(MlflowClient(uri))
    assert run.info.status == "FINISHED"
    assert run.data.params["precision"] == "float32,mixed_bfloat16"  # its layers' Keras dtype policies
    assert run.data.metrics["test_accuracy"] > 0.2  # it learnt (chance 0.1; 0.47 measured), in bf16


@pytest.mark.parametrize("override, line", [
    ("model._target_=foo.bar", "model._target_=foo.bar: no module foo on the Python path"),
    ("model._target_=my_models.not_a_model",
     "model._target_=my_models.not_a_model returned NoneType, not a keras.Model"),
])
def test_a_bad_target_is_one_line_naming_the_key_and_records_nothing(user_module, tmp_path, override, line):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli([*TINY_MLP, override, f"mlflow.tracking_uri={uri}"], tmp_path,
                   env={"PYTHONPATH": str(user_module)})
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if "_target_" in ln]
    assert len(errors) == 1 and errors[0].startswith(f"error: {line}"), proc.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists() or not all_runs(MlflowClient(uri))


def test_a_sweep_refuses_a_target_whose_module_is_not_there(tmp_path):
    proc = run_cli(sweep_args(tmp_path, "model._target_=foo.bar"), tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model._target_=foo.bar: no module foo")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.journal").exists()


def test_builders_name_the_key_when_the_function_is_missing_or_takes_other_arguments(user_module, monkeypatch):
    monkeypatch.syspath_prepend(str(user_module))
    cases = [("data._target_=my_models.missing", r"^data._target_=my_models.missing: cannot be loaded: "),
             ("data._target_=my_models.not_a_model", r"^data._target_=my_models.not_a_model cannot be called "
                                                     r"as builder\(data_cfg\): missing a required argument"),
             ("data._target_=my_models.wide_mlp", r"^data._target_=my_models.wide_mlp cannot be called")]
    for override, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as info:
            builders.load_data(compose_cfg([override]).data)
        assert "\n" not in str(info.value) and info.value.key == "data._target_"


def test_a_data_builder_returning_other_than_arrays_is_refused(user_module, monkeypatch, tmp_path):
    (tmp_path / "odd_data.py").write_text(textwrap.dedent('''
        import numpy as np

        def labels_as_floats(cfg):
            x = np.zeros((20, 8, 8), np.uint8)
            return (x, np.zeros(20)), (x, np.zeros(20, int))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^data._target_=odd_data.labels_as_floats returned y_train of shape "
                                          r"\(20,\) and dtype float64 for 20 images; a data builder returns"):
        builders.load_data(compose_cfg(["data._target_=odd_data.labels_as_floats"]).data)


def test_an_interrupted_mlp_run_resumes_to_the_uninterrupted_runs_metrics(tmp_path):
    import keras

    from lenet_sweep.training.train import train

    class Interrupt(keras.callbacks.Callback):  # Ctrl-C at the end of epoch 1, before its checkpoint
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def cfg(*extra):
        return compose_cfg([*TINY_MLP, "trainer.epochs=2", "optimizer.momentum=0.9",
                            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra])

    expected = train(cfg())
    with pytest.raises(KeyboardInterrupt):
        train(cfg(f"trainer.checkpoint_dir={tmp_path / 'first'}"), callbacks=[Interrupt()])
    resumed = train(cfg(f"trainer.resume={tmp_path / 'first'}"))
    for key in ("loss", "val_accuracy", "test_loss", "test_accuracy"):  # same process, same machine:
        assert resumed[key] == expected[key], key  # exactly
