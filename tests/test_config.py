"""The composed config and every value that must be rejected before TensorFlow loads."""

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from conftest import compose_cfg, run_cli
from lenet_sweep.config import ConfigError, validate


def test_defaults_are_the_notebook_configuration():
    cfg = compose_cfg()
    assert cfg.model.activation.value == "sigmoid"
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.nesterov) == (
        "sgd", 0.9, 0.0, False)
    assert (cfg.data.batch_size, cfg.data.validation_split, cfg.data.normalize) == (32, 0.1, False)
    assert cfg.data.train_limit is None and cfg.objective == "val_accuracy"
    assert cfg.trainer.epochs == 10
    validate(cfg)


def test_seed_experiment_is_the_notebook_exactly():
    cfg = compose_cfg(["experiment=seed", "optimizer.lr=0.1"])
    assert cfg.trainer.epochs == 50
    assert cfg.optimizer.momentum == 0.0 and cfg.data.batch_size == 32
    assert cfg.optimizer.lr == 0.1  # the command line still wins over the overlay


def test_groups_compose():
    cfg = compose_cfg(["optimizer=adam", "model.activation=relu", "data.batch_size=256"])
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == 0.001
    assert cfg.model.activation.value == "relu" and cfg.data.batch_size == 256


@pytest.mark.parametrize("override", [
    "model.activation=tanh", "optimizer.lr=abc", "optimizer.lrr=1", "trainer.epochs=1.5",
    "data.normalize=maybe",
])
def test_wrong_types_and_unknown_keys_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg([override])
    assert override.split("=")[0].split(".")[-1] in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=0", "optimizer.lr"), ("optimizer.lr=-1", "optimizer.lr"),
    ("optimizer.momentum=1.0", "optimizer.momentum"), ("optimizer.momentum=-0.1", "optimizer.momentum"),
    ("trainer.epochs=0", "trainer.epochs"), ("data.batch_size=0", "data.batch_size"),
    ("data.validation_split=0", "data.validation_split"),
    ("data.validation_split=1.0", "data.validation_split"),
    ("data.train_limit=3", "data.train_limit"), ("objective=val_acc", "objective"),
    ("trainer.stream_seed=1 trainer.stream_position=-1", "trainer.stream_position"),
    ("trainer.stream_position=2", "trainer.stream_position"),  # a position needs its stream's seed
    ("trainer.stream_seed=1 trainer.fast=false", "trainer.stream_seed"),  # Keras fit shuffles by its own
])
def test_out_of_range_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        validate(compose_cfg(override.split()))


@pytest.mark.parametrize("overrides", [["optimizer.name=rmsprop"], ["optimizer.name=adam"],
                                       ["optimizer=adam", "optimizer.name=sgd"]])
def test_the_optimizer_is_chosen_by_its_group_not_by_its_name_key(overrides):
    with pytest.raises(ConfigError, match=r"^optimizer.name=\w+ is invalid: choose the optimizer with the "
                                          r"group \(optimizer=sgd, optimizer=adam\)"):
        validate(compose_cfg(overrides))
    validate(compose_cfg(["optimizer=adam"]))  # the group sets its own name
    with pytest.raises(ConfigError, match=r"^optimizer.name=sgd is invalid"):
        validate(compose_cfg(["optimizer._target_=keras.optimizers.Adam"]))  # an sgd-labelled Adam


def test_the_optimizer_is_instantiated_from_its_group_with_lr_as_keras_learning_rate():
    from omegaconf import OmegaConf, open_dict

    from lenet_sweep.training.train import make_optimizer

    sgd = make_optimizer(compose_cfg(["optimizer.lr=0.25", "optimizer.momentum=0.5",
                                      "optimizer.nesterov=true"]).optimizer)
    assert (type(sgd).__name__, float(sgd.learning_rate), sgd.momentum, sgd.nesterov) == ("SGD", 0.25, 0.5, True)
    adam = make_optimizer(compose_cfg(["optimizer=adam", "optimizer.beta_2=0.99"]).optimizer)
    assert (type(adam).__name__, adam.beta_2, adam.epsilon) == ("Adam", 0.99, 1e-7)
    # a group the user adds: its own _target_ and options, no schema of ours
    rmsprop = OmegaConf.create({"_target_": "keras.optimizers.RMSprop", "name": "rmsprop", "lr": 0.5, "rho": 0.8})
    cfg = compose_cfg()
    with open_dict(cfg):
        cfg.optimizer = rmsprop
    validate(cfg)
    built = make_optimizer(rmsprop)
    assert (type(built).__name__, float(built.learning_rate), built.rho) == ("RMSprop", 0.5, 0.8)  # float32-exact
    with pytest.raises(ConfigError, match=r"^optimizer._target_=keras.optimizers.SGD cannot be built from "
                                          r"the optimizer group's keys: .*beta_1"):
        make_optimizer(OmegaConf.create({"_target_": "keras.optimizers.SGD", "name": "sgd", "lr": 0.1,
                                         "beta_1": 0.9}))


def test_cli_rejects_bad_value_in_one_line_before_tensorflow(tmp_path):
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules))\n"
        "sys.argv = ['lenet_sweep', 'optimizer.lr=-1', f'hydra.run.dir={sys.argv[1]}/out']\n"
        "from lenet_sweep.__main__ import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: optimizer.lr=-1.0 is invalid: must be > 0 (for example optimizer.lr=0.1)"]
    assert "tensorflow imported: False" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_rejects_unknown_activation(tmp_path):
    proc = run_cli(["model.activation=tanh", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"], tmp_path)
    assert proc.returncode != 0
    assert "model.activation" in proc.stderr and "expected one of [sigmoid, relu]" in proc.stderr
    assert not (tmp_path / "m.db").exists()


def test_help_says_what_the_app_is_its_groups_and_how_to_sweep(tmp_path):
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("lenet_sweep: LeNet-5 on Fashion-MNIST")
    for line in ("optimizer: adam, base_adam, base_sgd, sgd", "model: base_lenet, base_mlp, lenet, mlp", "experiment: seed",
                 "python -m lenet_sweep -m hydra/sweeper=optuna", "mlflow ui", "--cfg job"):
        assert line in out, line
    assert "__main__ is powered by Hydra" not in out
