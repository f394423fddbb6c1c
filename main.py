"""Command-line entry point: `python main.py {fit,validate,test} --config configs/<experiment>.yaml`."""

import sys

from cli import USER_ERRORS, SkipVAECLI, user_error
from models import VAE
from runtime.checkpoint_step import CheckpointStep
from runtime.preemption import Preempted
from runtime.random_state import RandomStateCheckpoint
from runtime.run_setup import keep_freed_memory
from runtime.slurm import EXIT_CODE


def cli_main(args: list[str] | None = None) -> SkipVAECLI:
    keep_freed_memory()
    return SkipVAECLI(
        VAE,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"callbacks": [RandomStateCheckpoint(), CheckpointStep()]},  # in every run
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> int:
    """What `python main.py` runs: the CLI, with bad input reported as one `error: ...` line and exit code 1
    (a bad config key or value exits with 2 from the parser, also as one line); a fit that SLURM preempted saves
    its checkpoint, says so in one line and exits with `runtime.slurm.EXIT_CODE`."""
    try:
        cli_main(args)
    except Preempted as stop:
        print(f"preempted: {stop}", file=sys.stderr)
        return EXIT_CODE
    except (*USER_ERRORS, ValueError) as error:
        reported = user_error(error)
        if reported is None:
            raise
        print(f"error: {reported}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
