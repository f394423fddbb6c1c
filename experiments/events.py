"""Scalars from a run's TensorBoard event files: the test metrics and validation curves a study reports."""

from pathlib import Path


def read_scalars(log_dir: Path, prefix: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under `prefix` in the TensorBoard events of `log_dir`, as (step, value) in step order; a step
    logged twice (a resumed run) keeps its latest value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    out = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith(prefix):
            steps = {event.step: event.value for event in events.Scalars(tag)}
            out[tag] = sorted(steps.items())
    return out
