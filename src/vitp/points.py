"""Choosing points: training samplers (target -> points + labels) and inference selection.

Coordinates are (y, x) in [-1, 1] relative to the *valid* image region of the input frame:
-1 / +1 are the region's top-left / bottom-right edges
(``align_corners=False`` convention), so a pixel centre (r, c) of a region of size (h, w) maps to
``y = (2 * r + 1) / h - 1``, ``x = (2 * c + 1) / w - 1``.
"""

from __future__ import annotations

import torch

from vitp.structures import Target


def pixel_to_point(rows: torch.Tensor, cols: torch.Tensor, valid_size: tuple[int, int]) -> torch.Tensor:
    """Pixel centres (rows, cols) of the valid region -> ``float[n, 2]`` (y, x) in [-1, 1]."""
    h, w = valid_size
    y = (2 * rows.float() + 1) / h - 1
    x = (2 * cols.float() + 1) / w - 1
    return torch.stack([y, x], dim=-1)


class PointSampler:
    """Base class of training point samplers.

    ``sampler(target, generator)`` returns ``points float[P, 2]`` and ``labels long[P]`` for one
    image (P may vary; the collate function pads with label -1). Ignore (void) and crowd pixels are
    never sampled.
    """

    def __init__(self, num_points: int = 100) -> None:
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.num_points = num_points

    def __call__(
        self, target: Target, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
