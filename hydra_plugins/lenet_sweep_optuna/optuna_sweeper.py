"""The class Hydra discovers for ``hydra/sweeper=optuna``; the logic is in ``lenet_sweep.sweep``."""

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from lenet_sweep.sweep.settings import register

register()


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from lenet_sweep.sweep.runner import SweepRunner

        self.runner = SweepRunner(settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from lenet_sweep.sweep.runner import one_line_errors

        one_line_errors(lambda: self.runner.setup(hydra_context=hydra_context, task_function=task_function,
                                                  config=config))

    def sweep(self, arguments: List[str]) -> Optional[Any]:
        from lenet_sweep.sweep.runner import one_line_errors

        return one_line_errors(lambda: self.runner.sweep(arguments))
