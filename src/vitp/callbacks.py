"""Lightning callbacks of vitp."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


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
