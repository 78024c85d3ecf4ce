"""Lightning callbacks of vitp."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class SkippedSamplesLogger(L.Callback):
    """Log ``{stage}/skipped_samples``: the samples the data module skipped (``on_bad_sample=skip``,
    ``SegmentationDataModule.skipped_samples``), summed over processes, at the end of every train,
    validation and test epoch. ``ViTPModule.configure_callbacks`` adds it to every run."""

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if getattr(datamodule, "on_bad_sample", "error") != "skip":
            return
        count = float(datamodule.skipped_samples.get(stage, 0))
        pl_module.log(f"{stage}/skipped_samples", count, sync_dist=True, reduce_fx="sum")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")


class SaveProposer(L.Callback):
    """At the end of ``fit``, save the trained proposer with ``save_pretrained(dirpath)``.

    A later stage then builds it with ``model: <dirpath>`` (e.g. frozen, under a ViT-P classifier).

    Args:
        dirpath: directory to write (created when missing).
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        proposer = getattr(pl_module, "proposer", None)
        if proposer is None or not hasattr(proposer, "save_pretrained"):
            raise ValueError(f"SaveProposer: {type(proposer).__name__} has no save_pretrained()")
        if trainer.is_global_zero:
            proposer.save_pretrained(self.dirpath)
            rank_zero_info(f"proposer saved to {Path(self.dirpath).resolve()}")
        trainer.strategy.barrier("vitp-save-proposer")
