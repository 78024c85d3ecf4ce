"""The ``MaskProposer`` interface: what a proposer declares, receives and returns.

A proposer is a pure ``nn.Module`` (no Lightning) that turns a padded image batch into ``Q`` mask
proposals (``vitp.structures.Proposals``). A new proposer subclasses ``MaskProposer``, sets the
four facts below and implements ``forward`` (and ``loss`` when it can be trained).
"""

from __future__ import annotations

import torch
from torch import nn

from vitp.structures import HeadMismatch, Proposals, Target


class MaskProposer(nn.Module):
    """Base class of mask proposers.

    What a proposer declares (read by the pipeline and the LightningModule, never duck-typed):

    * ``num_classes``: the dataset's K; None only when unknown and class-agnostic.
    * ``class_agnostic``: True when ``forward`` returns ``class_logits=None`` and fills
      ``objectness`` instead (the point classifier alone decides the classes).
    * ``task_conditioned``: True when the proposals depend on ``task`` (OneFormer); the pipeline
      then calls ``forward`` once per task, otherwise once for all tasks.
    * ``needs_targets``: True when ``forward`` reads the ground truth (the oracle); only then are
      ``targets`` passed.
    * ``trainable``: True when ``loss`` is implemented and some parameter requires a gradient.
    * ``head_mismatch``: a ``vitp.structures.HeadMismatch`` when pretrained class layers do not
      fit the dataset's label space and nothing maps them; the module then calls
      ``reinit_class_head()`` (its ``reinit_heads_on_mismatch``) or raises.

    What it receives: the ``vitp`` CLI links the dataset's label space into every proposer, so
    ``__init__`` accepts ``num_classes: int | None``, ``class_names: list[str] | None`` and
    ``is_thing: list[bool] | None`` (it may ignore the last two).

    What ``forward(images, task, targets)`` returns: ``Proposals`` with ``mask_logits`` over the
    padded input frame; ``class_logits [B, Q, K+1]`` in the dataset's label space, or None plus
    ``objectness [B, Q]`` when class-agnostic; ``valid_sizes`` when the masks are not the input
    frame scaled (e.g. given at the original image size); ``tasks``, one per image. The fields
    ``raw_class_logits``, ``layers`` and ``query_embeddings`` are for the proposer's own ``loss``.
    """

    num_classes: int | None = None
    class_agnostic: bool = False
    task_conditioned: bool = False
    needs_targets: bool = False
    head_mismatch: HeadMismatch | None = None

    def reinit_class_head(self) -> None:
        """Replace the class layers by fresh ones for the dataset's classes (after ``head_mismatch``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot re-initialise its class head")

    def forward(
        self, images: torch.Tensor, task: str = "panoptic", targets: list[Target] | None = None
    ) -> Proposals:
        """``images float[B,3,H,W]`` (normalised, top-left padded) -> ``Proposals``."""
        raise NotImplementedError

    @property
    def trainable(self) -> bool:
        """True when the proposer implements ``loss`` and has trainable parameters."""
        return type(self).loss is not MaskProposer.loss and any(
            p.requires_grad for p in self.parameters()
        )

    def loss(self, proposals: Proposals, targets: list[Target]) -> dict[str, torch.Tensor]:
        """Training losses (name -> scalar); the key ``loss`` is the total to optimise."""
        raise NotImplementedError(f"{type(self).__name__} cannot be trained")
