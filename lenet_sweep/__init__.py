"""LeNet-5 on Fashion-MNIST: Hydra configs, MLflow tracking, an Optuna sweeper."""

from pathlib import Path

#: The folder that holds ``conf/`` and ``lenet_sweep/``; default MLflow and Optuna stores live here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
