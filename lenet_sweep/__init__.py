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
