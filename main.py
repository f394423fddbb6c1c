"""Command-line entry point: `python main.py {fit,validate,test} --config configs/<experiment>.yaml`."""

import sys

from lightning.pytorch.cli import LightningCLI

from datamodules.files import DataError
from models.vae import VAE, CheckpointMismatchError, NonFiniteLossError


class SkipVAECLI(LightningCLI):
    """LightningCLI with the data's shape given once, by the datamodule, to the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_dims", "model.init_args.data_dims", apply_on="instantiate")


def cli_main(args: list[str] | None = None) -> SkipVAECLI:
    return SkipVAECLI(
        VAE,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    try:
        cli_main()
    except (DataError, CheckpointMismatchError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
