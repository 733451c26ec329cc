"""Dependencies point one way: each module, imported in a fresh interpreter, pulls in none of what it
must not know about.

The modules are imported in two chains, one interpreter each (TensorFlow costs seconds per
interpreter), in an order where no module loads what a later one must not: what a module pulls in is
checked against everything loaded so far, so an earlier module can only make a later check fail,
never pass (an order that broke this would show as a failure, not hide one). They run with oneDNN's
optimisations on, as on the Intel machines, and print nothing (lenet_sweep.quiet)."""

import json
import os
import subprocess
import sys

import pytest

RULES = {
    "lenet_sweep.model": ["mlflow", "optuna", "lenet_sweep.sweep", "lenet_sweep.tracking", "lenet_sweep.training", "lenet_sweep.pack"],
    "lenet_sweep.model.packed": ["mlflow", "optuna", "lenet_sweep.sweep", "lenet_sweep.tracking", "lenet_sweep.training", "lenet_sweep.pack"],
    "lenet_sweep.training.record": ["optuna", "lenet_sweep.sweep", "lenet_sweep.trial", "lenet_sweep.training.train"],
    "lenet_sweep.training.train": ["optuna", "lenet_sweep.sweep", "lenet_sweep.trial"],
    "lenet_sweep.pack.worker": ["lenet_sweep.sweep"],
    "lenet_sweep.config": ["mlflow", "optuna", "tensorflow"],
    "lenet_sweep.pack.rules": ["tensorflow", "mlflow", "optuna", "lenet_sweep.sweep"],
    "lenet_sweep.data": ["mlflow", "optuna", "tensorflow", "lenet_sweep.sweep"],
    "lenet_sweep.builders": ["mlflow", "optuna", "tensorflow", "lenet_sweep.sweep"],
    "lenet_sweep.tracking": ["optuna", "tensorflow", "lenet_sweep.sweep"],
    "lenet_sweep.trial": ["tensorflow", "lenet_sweep.sweep", "lenet_sweep.training.train"],
    "lenet_sweep.report": ["tensorflow", "lenet_sweep.sweep", "lenet_sweep.training.train"],
    "lenet_sweep.sweep.plan": ["tensorflow", "lenet_sweep.training.train", "lenet_sweep.model"],
    "lenet_sweep.sweep.runner": ["tensorflow", "lenet_sweep.training.train", "lenet_sweep.model"],
    "lenet_sweep.sweep.lifecycle": ["tensorflow", "lenet_sweep.training.train", "lenet_sweep.model"],
    "lenet_sweep.sweep.loop": ["tensorflow", "lenet_sweep.training.train", "lenet_sweep.model"],
    "lenet_sweep.pack.pool": ["tensorflow", "lenet_sweep.training.train", "lenet_sweep.pack.worker"],
    "hydra_plugins.lenet_sweep_optuna.optuna_sweeper": ["tensorflow", "lenet_sweep.training.train"],
    "hydra_plugins.lenet_sweep_optuna.pool_launcher": ["tensorflow", "lenet_sweep.training.train"],
}
#: the first five import TensorFlow; the rest must not
CHAINS = [list(RULES)[:5], list(RULES)[5:]]

PROBE = """
import importlib, json, sys
loaded = {}
for module in sys.argv[1:]:
    importlib.import_module(module)
    loaded[module] = sorted(sys.modules)
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def chains() -> tuple[dict[str, list[str]], list[str]]:
    """For each module of RULES, the modules loaded once it was imported (after those before it in
    its chain); and each chain's stderr."""
    loaded, stderr = {}, []
    for chain in CHAINS:
        out = subprocess.run([sys.executable, "-c", PROBE, *chain], capture_output=True, text=True,
                             timeout=300, check=True, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"})
        loaded.update(json.loads(out.stdout.strip().splitlines()[-1]))
        stderr.append(out.stderr)
    return loaded, stderr


@pytest.mark.xdist_group("imports")
@pytest.mark.parametrize("module", RULES)
def test_module_does_not_import(module, chains):
    loaded = chains[0][module]
    pulled = sorted(f for f in RULES[module] if any(m == f or m.startswith(f + ".") for m in loaded))
    assert pulled == [], f"{module} imports {pulled}"


@pytest.mark.xdist_group("imports")
def test_importing_tensorflow_with_onednn_on_prints_nothing(chains):
    # the chains run with TF_ENABLE_ONEDNN_OPTS=1, which makes TensorFlow print the Intel machines'
    # oneDNN line on any x86 CPU: lenet_sweep.quiet filters it, with the other start-up lines
    assert chains[1] == ["", ""], chains[1]
