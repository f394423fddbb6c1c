"""The runs' TensorBoard logger: Lightning's, without what clutters TensorBoard's pages.

- no `epoch` scalar with every logged step (Lightning adds one; the x axis is the global step, and the
  checkpoints and the text log name the epoch), so the Time Series page opens on the run's own metrics;
- no placeholder `hp_metric = -1`, and no `_instantiator`/`_class_path` columns in the hyper-parameters;
- one row on the HParams page for every fit (with its last validation metrics) and every test run (with its
  `test/*` metrics), so runs compare in one table. The row leads with the columns a comparison reads first, numbered
  so that TensorBoard, which orders columns by name, shows them first: the model class (with its refinement), the
  encoder and decoder classes, the latent size, the learning rate, the KL schedule and the remedies; then every
  setting, whole numbers shown as such (TensorBoard would print 50 as 50.000).
"""

from collections.abc import Mapping
from typing import Any

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch import loggers
from lightning.pytorch.utilities import rank_zero_only

REMEDY_PARTS = ("kl_term", "mean_normalisation", "procedure")


def class_name(part: Any) -> str:
    """The class name of a part's config (`{"class_path": "a.b.C", ...}` -> "C"), "none" for an unset part."""
    if isinstance(part, Mapping) and "class_path" in part:
        return str(part["class_path"]).rsplit(".", 1)[-1]
    return "none" if part is None else str(part)


def described(part: Any) -> str:
    """A part's class with its settings, `LinearWarmup(start=0.1, epochs=10)`."""
    settings = part.get("init_args") or {} if isinstance(part, Mapping) else {}
    return class_name(part) + ("(" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")" if settings else "")


def leading_columns(hparams: Mapping[str, Any], model_class: str | None) -> dict[str, Any]:
    """The columns a comparison of runs reads first, numbered in the order they are read."""
    model = model_class or "model"
    refinement = hparams.get("refinement")
    optimizer = hparams.get("optimizer")
    lr = (optimizer.get("init_args") or {}).get("lr") if isinstance(optimizer, Mapping) else None
    schedule = hparams.get("kl_schedule")
    remedies = [described(hparams[key]) for key in REMEDY_PARTS if hparams.get(key) is not None]
    if isinstance(schedule, Mapping) and class_name(schedule) != "LinearWarmup":  # a remedy's schedule
        remedies.insert(0, described(schedule))
    return {
        "1 model": model + (f" + {class_name(refinement)}" if refinement is not None else ""),
        "2 encoder": class_name(hparams.get("encoder")),
        "3 decoder": class_name(hparams.get("decoder")),
        "4 latent_dim": str(hparams.get("latent_dim")),
        "5 lr": lr if lr is not None else "none",
        "6 kl_schedule": described(schedule) if schedule is not None else "beta 1",
        "7 remedies": ", ".join(remedies) or "none",
    }


class TensorBoardLogger(loggers.TensorBoardLogger):
    """`lightning.pytorch.loggers.TensorBoardLogger` with the changes of the module docstring; same arguments
    (`default_hp_metric` is False here)."""

    def __init__(self, *args: Any, default_hp_metric: bool = False, **kwargs: Any):
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)  # type: ignore[misc]
        self.test_metrics: dict[str, float] = {}
        self.validation_metrics: dict[str, float] = {}
        self.model_class: str | None = None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        metrics = {name: value for name, value in metrics.items() if name != "epoch"}
        for prefix, kept in (("test/", self.test_metrics), ("val/", self.validation_metrics)):
            kept.update({name: float(value) for name, value in metrics.items() if name.startswith(prefix)})
        if metrics:
            super().log_metrics(metrics, step)

    def log_hyperparams(self, params, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        """Stores the settings (in `hparams.yaml` too); the HParams row is written when the run ends."""
        params = _convert_params(params)
        super().log_hyperparams({name: value for name, value in params.items() if not name.startswith("_")})

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Lightning hands every logger the model here, after its settings: the HParams row names its class."""
        self.model_class = type(model).__name__
        super().log_graph(model, input_array)

    def hparams_columns(self) -> dict[str, Any]:
        """The HParams row's settings: the leading columns, then every setting, flattened."""
        hparams = dict(vars(self.hparams) if not isinstance(self.hparams, Mapping) else self.hparams)
        settings = self._sanitize_params(_flatten_dict(hparams))
        settings = {name: str(value) if type(value) is int else value for name, value in settings.items()}
        return {**leading_columns(hparams, self.model_class), **settings}

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """A test run's row holds its test metrics; a fit's, its last validation metrics."""
        metrics = self.test_metrics or self.validation_metrics
        if status == "success" and metrics:
            from torch.utils.tensorboard.summary import hparams

            writer = self.experiment._get_file_writer()
            for summary in hparams(self.hparams_columns(), dict(metrics)):
                writer.add_summary(summary)
        super().finalize(status)
