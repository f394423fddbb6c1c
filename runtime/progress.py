"""Progress of the work callbacks do after the last batch of an epoch (autoregressive sampling, latent-space views,
the full-set diagnostics, the probe), which the progress bar, standing at 100%, does not show."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.utilities import rank_zero_info


@contextmanager
def reported(trainer, what: str, after_s: float = 5.0, every_s: float = 30.0) -> Iterator[None]:
    """Runs the body; if it takes more than `after_s` seconds, the process that logs says `what` it is doing, how
    long it has taken every `every_s` seconds, and when it is done. Quick work prints nothing."""
    if trainer is None or not trainer.is_global_zero:
        yield
        return
    start, done = time.monotonic(), threading.Event()

    def heartbeat() -> None:
        if done.wait(after_s):
            return
        rank_zero_info(f"{what} ...")
        while not done.wait(every_s):
            rank_zero_info(f"{what}: {time.monotonic() - start:.0f} s so far")

    thread = threading.Thread(target=heartbeat, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if (elapsed := time.monotonic() - start) >= after_s:
            rank_zero_info(f"{what}: done in {elapsed:.0f} s")
