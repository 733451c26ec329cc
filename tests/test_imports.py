"""Dependencies point one way: each module imported alone, in a fresh interpreter, pulls in none of
what it must not know about."""

import subprocess
import sys

import pytest

RULES = [
    ("lenet_sweep.model", ["mlflow", "optuna", "lenet_sweep.sweep", "lenet_sweep.tracking"]),
    ("lenet_sweep.data", ["mlflow", "optuna", "tensorflow", "lenet_sweep.sweep"]),
    ("lenet_sweep.config", ["mlflow", "optuna", "tensorflow"]),
    ("lenet_sweep.tracking", ["optuna", "tensorflow", "lenet_sweep.sweep"]),
    ("lenet_sweep.train", ["optuna", "lenet_sweep.sweep", "lenet_sweep.trial"]),
    ("lenet_sweep.trial", ["tensorflow", "lenet_sweep.sweep", "lenet_sweep.train"]),
    ("lenet_sweep.report", ["tensorflow", "lenet_sweep.sweep", "lenet_sweep.train"]),
    ("lenet_sweep.sweep.runner", ["tensorflow", "lenet_sweep.train", "lenet_sweep.model"]),
    ("lenet_sweep.sweep.pack_pool", ["tensorflow", "lenet_sweep.train", "lenet_sweep.pack_worker"]),
    ("lenet_sweep.packing", ["tensorflow", "mlflow", "optuna", "lenet_sweep.sweep"]),
    ("lenet_sweep.packed", ["mlflow", "optuna", "lenet_sweep.sweep", "lenet_sweep.tracking"]),
    ("lenet_sweep.pack_worker", ["lenet_sweep.sweep"]),
    ("hydra_plugins.lenet_sweep_optuna.optuna_sweeper", ["tensorflow", "lenet_sweep.train"]),
    ("hydra_plugins.lenet_sweep_optuna.pool_launcher", ["tensorflow", "lenet_sweep.train"]),
]


@pytest.mark.parametrize("module, forbidden", RULES, ids=[m for m, _ in RULES])
def test_module_does_not_import(module, forbidden):
    probe = (f"import sys, importlib; importlib.import_module({module!r}); "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {{'mlflow', 'optuna', 'tensorflow'}} "
             f"or m.startswith('lenet_sweep.')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(eval(out.stdout.strip().splitlines()[-1]))
    pulled = sorted(f for f in forbidden if any(m == f or m.startswith(f + ".") for m in loaded))
    assert pulled == [], f"{module} imports {pulled}"
