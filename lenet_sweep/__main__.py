"""``python -m lenet_sweep [overrides]``: one training run; ``-m hydra/sweeper=optuna``: a sweep."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lenet_sweep import PROJECT_ROOT  # noqa: E402
from lenet_sweep.config import ConfigError, register, validate  # noqa: E402

register()


def objective(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise ConfigError(f"objective={name} names no metric of this run; "
                          f"one of: {', '.join(sorted(metrics))}")
    return float(metrics[name])


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    single_run = HydraConfig.get().mode == RunMode.RUN
    try:
        validate(cfg)  # before TensorFlow is imported
        from lenet_sweep.data import DataError
        from lenet_sweep.train import TrainingDiverged, train

        try:
            return objective(train(cfg), cfg.objective)
        except (DataError, TrainingDiverged) as exc:
            raise ConfigError(str(exc)) from exc
    except ConfigError as exc:
        if single_run:  # one line, no traceback; in a sweep the trial fails and the sweep goes on
            sys.exit(f"error: {exc}")
        raise


if __name__ == "__main__":
    main()
