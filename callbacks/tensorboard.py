"""The runs' TensorBoard logger: Lightning's, without what clutters TensorBoard's pages.

- no `epoch` scalar with every logged step (Lightning adds one; the x axis is the global step, and the
  checkpoints and the text log name the epoch), so the Time Series page opens on the run's own metrics;
- no placeholder `hp_metric = -1`, and no `_instantiator`/`_class_path` columns in the hyper-parameters;
- the HParams page gets the final `test/*` metrics of a test run next to the run's settings, so runs compare in
  one table.
"""

from collections.abc import Mapping
from typing import Any

from lightning.fabric.utilities.logger import _convert_params
from lightning.pytorch import loggers
from lightning.pytorch.utilities import rank_zero_only


class TensorBoardLogger(loggers.TensorBoardLogger):
    """`lightning.pytorch.loggers.TensorBoardLogger` with the changes of the module docstring; same arguments
    (`default_hp_metric` is False here)."""

    def __init__(self, *args: Any, default_hp_metric: bool = False, **kwargs: Any):
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)  # type: ignore[misc]
        self.test_metrics: dict[str, float] = {}
        self._hparams_only = False  # while the HParams summary is written: its metrics are scalars already

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._hparams_only:
            return
        metrics = {name: value for name, value in metrics.items() if name != "epoch"}
        self.test_metrics.update({name: float(value) for name, value in metrics.items() if name.startswith("test/")})
        if metrics:
            super().log_metrics(metrics, step)

    def log_hyperparams(self, params, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        params = {name: value for name, value in _convert_params(params).items() if not name.startswith("_")}
        super().log_hyperparams(params, metrics, step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status == "success" and self.test_metrics:
            self._hparams_only = True  # Lightning would log the test scalars a second time
            try:
                super().log_hyperparams(self.hparams, dict(self.test_metrics))
            finally:
                self._hparams_only = False
        super().finalize(status)
