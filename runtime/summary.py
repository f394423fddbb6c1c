"""The model summary printed at the start of fitting: Lightning's, without the FLOPs it cannot measure here.

Lightning counts FLOPs only for a model with an `example_input_array`; the project's models have none (an example
depends on the data), so its summary shows a column of zeros and "0 Total Flops". This summary leaves both out when
nothing was measured; the CLI puts it in place of Lightning's default one.
"""

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

log = logging.getLogger("lightning.pytorch.callbacks.model_summary")


class ModelSummaryWithoutZeroFlops(ModelSummary):
    """`ModelSummary` whose table has no FLOPs column and no total when the total is 0 (not measured)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            ModelSummary.summarize(
                summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops
            )
            return
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, 0, *columns
        )
        log.info("\n" + table.rsplit("\n", 1)[0])  # without the last line, "0 Total Flops"
