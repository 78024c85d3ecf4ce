"""What the module and the pipeline may rely on from a point classifier."""

from __future__ import annotations

import torch
from torch import nn

from vitp.structures import PointMasks


class PointClassifier(nn.Module):
    """Base class of point classifiers: ``(images, points, valid_sizes[, point_masks]) -> logits``.

    Contract (``vitp.module.ViTPModule`` and ``vitp.pipeline.TwoStagePipeline`` use nothing else):

    * ``forward(images float[B, 3, H, W], points float[B, P, 2], valid_sizes long[B, 2] | None,
      point_masks=None) -> float[B, P, C]``; points are (y, x) in [-1, 1] of each image's valid
      region (``vitp.points``); a point's logits must not depend on the other points.
    * ``needs_point_masks``: True when ``forward`` needs ``point_masks`` (``vitp.structures.PointMasks``:
      the segment each point belongs to).
    * ``set_num_classes(C, reinit_heads)``: called once by the module before training, with C = the
      data's K classes (+1 "no object" with ``vitp.training.ProposalPoints``; the module sets it, not a
      CLI link, because C depends on the module's point-supervision strategy) and the module's
      ``reinit_heads_on_mismatch``: whether pretrained weights whose head has another size may get a
      fresh head (``vitp.checkpoint_heads``).
    """

    @property
    def needs_point_masks(self) -> bool:
        return False

    def set_num_classes(self, num_classes: int, reinit_heads: bool = False) -> None:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, points: torch.Tensor, valid_sizes: torch.Tensor | None = None,
                point_masks: PointMasks | None = None) -> torch.Tensor:
        raise NotImplementedError
