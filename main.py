"""Command-line entry point: `python main.py {fit,validate,test} --config configs/<experiment>.yaml`."""

import sys

from callbacks.checkpoint_step import CheckpointStep
from callbacks.random_state import RandomStateCheckpoint
from cli import USER_ERRORS, SkipVAECLI
from models import VAE
from run_setup import keep_freed_memory


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


if __name__ == "__main__":
    try:
        cli_main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
