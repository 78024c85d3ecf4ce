"""``vitp fit|validate|test|predict``: LightningCLI in subclass mode for model and data."""

from __future__ import annotations

import os
from typing import Optional

from lightning.pytorch.cli import LightningCLI

from vitp.module import ViTPModule
from vitp.structures import DatasetInfo


class VitpCLI(LightningCLI):
    """LightningCLI that links the data module's label space into the model once, and logs to
    TensorBoard and CSV side by side unless the config names its own ``trainer.logger``."""

    def init_parser(self, **kwargs):  # noqa: ANN003, ANN201
        """Every parser (the main one and each subcommand's) reads YAML with ``vitp.cli_hooks.load_config``."""
        import yaml
        from jsonargparse import set_loader

        from vitp.cli_hooks import CONFIG_MODE, load_config

        set_loader(CONFIG_MODE, load_config, (yaml.YAMLError,))
        return super().init_parser(parser_mode=CONFIG_MODE, **kwargs)

    def instantiate_trainer(self, **kwargs):  # noqa: ANN003, ANN201
        config = self._get(self.config_init, "trainer", default={}) or {}
        if "logger" not in kwargs and config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(config.get("default_root_dir") or os.getcwd())
        return super().instantiate_trainer(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (LightningArgumentParser)
        parser.add_argument("--export_pretrained", type=Optional[str], default=None,
                            help="fit only: at the end, write the trained model as one shareable folder here "
                                 "(vitp.Segmenter.from_pretrained(DIR) loads it; see vitp.pretrained)")
        parser.link_arguments("data.model_label_space", "model.init_args.dataset_info", apply_on="instantiate")
        # Every proposer receives the dataset's label space (see vitp.proposers.base.MaskProposer).
        proposer = "model.init_args.proposer.init_args"
        parser.link_arguments("data.num_classes", f"{proposer}.num_classes", apply_on="instantiate")
        parser.link_arguments("data.model_label_space", f"{proposer}.class_names", compute_fn=_class_names,
                              apply_on="instantiate")
        parser.link_arguments("data.model_label_space", f"{proposer}.is_thing", compute_fn=_is_thing,
                              apply_on="instantiate")


    def parse_arguments(self, parser, args) -> None:  # noqa: ANN001 (LightningArgumentParser, CLI args)
        """Parse, then read ``--ckpt_path`` once (an unreadable file stops here, named); ``validate`` /
        ``test`` / ``predict`` build the model in the checkpoint's label space
        (``data.init_args.label_space``); ``predict`` without ``model.init_args.output.export_dir`` writes to
        ``<default_root_dir>/predictions`` (``vitp.cli_hooks.prepare_run``)."""
        from vitp.cli_hooks import check_renamed_options, prepare_run

        check_renamed_options(args)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        self.pretrained_folder = prepare_run(subcommand, self.config[subcommand] if subcommand else self.config)

    def instantiate_classes(self) -> None:
        """Build the classes; with a pretrained folder's config, load its weights into the model."""
        from vitp.cli_hooks import load_pretrained_weights

        super().instantiate_classes()
        load_pretrained_weights(self.model, getattr(self, "pretrained_folder", None))

    def after_fit(self) -> None:
        from vitp.cli_hooks import after_fit

        after_fit(self.trainer, self.model, self.datamodule, self.config["fit"])

    def after_predict(self) -> None:
        from vitp.cli_hooks import report_exports

        report_exports(self.trainer, self.model, "predict")

    def after_test(self) -> None:
        from vitp.cli_hooks import report_exports

        report_exports(self.trainer, self.model, "test")


def default_loggers(root: str | os.PathLike) -> list:
    """``[CSVLogger, TensorBoardLogger]`` writing to the same ``ROOT/lightning_logs/version_N``
    (TensorBoard only when ``tensorboard`` is installed; CSV always). CSV comes first: it creates
    the directory before TensorBoard's event file is in it (the other order warns that the
    directory is not empty on every run)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE

    csv = CSVLogger(root, name="lightning_logs")
    if not (_TENSORBOARD_AVAILABLE or _TENSORBOARDX_AVAILABLE):
        return [csv]
    # one version directory for both (the CSV logger's next free version, computed once)
    return [csv, TensorBoardLogger(root, name="lightning_logs", version=csv.version, default_hp_metric=False)]


def _class_names(info: DatasetInfo) -> list[str]:
    return list(info.class_names)


def _is_thing(info: DatasetInfo) -> list[bool]:
    return list(info.is_thing)


def cli(args: list[str] | None = None, run: bool = True) -> VitpCLI:
    """The ``vitp`` LightningCLI (``args`` defaults to the command line; ``run=False``: parse and
    instantiate without a subcommand, e.g. to build a configured model and data module in-process)."""
    from vitp.data import SegmentationDataModule

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return VitpCLI(
        ViTPModule,
        SegmentationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # The optimiser and its schedule are ViTPModule's `optimization` block: LightningCLI's own
        # --optimizer / --lr_scheduler would replace configure_optimizers and skip vitp's parameter
        # groups (point-embedding lr, layer decay, warmup), so they are not offered.
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point (``args`` defaults to the command line). ``vitp weights ...`` writes
    pretrained weights (``vitp.weights.cli``), ``vitp study ...`` runs a study (``vitp.studies.cli``);
    everything else is LightningCLI."""
    import sys

    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["weights"]:
        from vitp.weights.cli import main as weights_main

        sys.exit(weights_main(argv[1:]))
    if argv[:1] == ["study"]:
        from vitp.studies.cli import main as study_main

        sys.exit(study_main(argv[1:]))
    cli(args)


if __name__ == "__main__":  # pragma: no cover
    main()
