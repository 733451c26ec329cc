"""``python -m lenet_sweep [overrides]``: one training run; ``-m hydra/sweeper=optuna``: a sweep."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lenet_sweep import CONF_DIR
from lenet_sweep.config import UserError, objective_value, register, validate

register()
log = logging.getLogger(__name__)

#: keys that became config groups: the one-line hint for each (Hydra's own error would not say)
MOVED = {"hydra.sweeper.sampler=": "hydra/sweeper/sampler=", "hydra.sweeper.pruner.name=": "hydra/sweeper/pruner="}


def _moved_keys(argv: list[str]) -> None:
    for arg in argv:
        for old, new in MOVED.items():
            if arg.startswith(old):
                value = arg[len(old):]
                sys.exit(f"error: {arg} is now a config group: write {new}{value} "
                         f"(its options: {new.replace('/', '.').rstrip('=')}.KEY=VALUE)")


def _traceback_to_log_file(exc: BaseException) -> None:
    """The full traceback into the job's log file (Hydra's file handler) only: the console keeps
    one line per failure."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "the run failed", None,
                            (type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    logging.raiseExceptions = False  # a job log file on a full disk loses its lines: no traceback each
    try:
        validate(cfg)  # before TensorFlow is imported, as are the store checks:
        from lenet_sweep import tracking

        tracking.check_store(cfg.mlflow)  # an unreachable tracking store is one line, in a second
        from lenet_sweep.training.train import train  # imports TensorFlow, its start-up lines filtered
        from lenet_sweep.trial import Job

        job = Job.from_hydra()  # what this run is, decided here once
        if job.payload is None:
            return objective_value(train(cfg, job=job), cfg.objective)
        from lenet_sweep.training.train import PruningCallback
        from lenet_sweep.trial import Reporter

        reporter = Reporter(job.payload)
        metrics = train(cfg, callbacks=[PruningCallback(reporter.report, job.payload.monitor)],
                        run_id=job.payload.run_id, job=job)
        reporter.raise_if_pruned()  # after the run is recorded; the sweeper tells Optuna PRUNED
        return objective_value(metrics, cfg.objective)
    except Exception as exc:
        _traceback_to_log_file(exc)
        from lenet_sweep.tracking import write_error  # a full disk: the path and the reason

        line = str(exc) if isinstance(exc, UserError) else write_error(exc)
        if line is not None and HydraConfig.get().mode == RunMode.RUN:  # one line, no traceback
            sys.exit(f"error: {line}")
        raise  # in a sweep the trial fails with this reason and the sweep goes on


if __name__ == "__main__":
    _moved_keys(sys.argv[1:])
    main()
