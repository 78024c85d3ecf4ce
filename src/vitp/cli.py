"""``vitp fit|validate|test|predict``: LightningCLI in subclass mode for model and data."""

from __future__ import annotations

import os
import sys

from lightning.pytorch.cli import LightningCLI

from vitp.module import ViTPModule


class VitpCLI(LightningCLI):
    """LightningCLI that links the data module's label space into the model once."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (LightningArgumentParser)
        parser.link_arguments("data.dataset_info", "model.init_args.dataset_info", apply_on="instantiate")
        parser.link_arguments(
            "data.num_classes", "model.init_args.proposer.init_args.num_classes", apply_on="instantiate"
        )


def main(args: list[str] | None = None) -> VitpCLI:
    """Console entry point."""
    import lightning as L

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return VitpCLI(
        ViTPModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
