"""LeNet-5 on Fashion-MNIST: Hydra configs, MLflow tracking, an Optuna sweeper."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent

#: True when run from a source checkout (``conf/`` and ``pyproject.toml`` beside the package).
IN_CHECKOUT = (_CHECKOUT / "conf").is_dir() and (_CHECKOUT / "pyproject.toml").is_file()

#: Where the default stores live (``mlflow.db``, ``mlruns/``, ``multirun/optuna.journal``): the
#: checkout's folder, or, for an installed package, the folder the command was started in.
PROJECT_ROOT = _CHECKOUT if IN_CHECKOUT else Path.cwd()

#: Hydra's config folder: the checkout's ``conf/``, or the copy installed inside the package.
CONF_DIR = _CHECKOUT / "conf" if IN_CHECKOUT else _PACKAGE / "conf"


def __getattr__(name: str):
    """``lenet_sweep.run`` and ``lenet_sweep.sweep``: the Python API (:mod:`lenet_sweep.api`), imported
    when first used (the command line does not need it)."""
    if name in ("run", "sweep"):
        from lenet_sweep import api

        return getattr(api, name)
    raise AttributeError(f"module 'lenet_sweep' has no attribute {name!r}")
