"""Hard segment maps of a ``NativeBackbone``'s grouping hierarchy.

For level ``k`` (1: stride-8 groups, 2: stride-16, 3: stride-32 = the final groups) every stride-4
token is given the group of highest probability in the chained assignment ``A_1 ... A_k``
(``NativeOutput.chain(k)``); the stride-4 map is upsampled (nearest, x4) and cropped to the input
image. Label ``g`` of a level-``k`` map is the index of the group on that level's row-major grid of
the 32-padded image, so it lies in ``0 .. N_k - 1`` with ``N_k = (H_p / 2^(k+2)) * (W_p / 2^(k+2))``.

The chain is soft: a fine segment need not fall inside one coarse segment (only the stride-4
token's most likely coarse group is taken, level by level independently).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitp.backbones.native import NativeBackbone, NativeOutput


def level_num_groups(out: NativeOutput, level: int) -> int:
    """``N_level``: number of groups of a level (for the 32-padded image)."""
    h, w = out.assignments[level - 1].out_size
    return h * w


def hierarchy_maps(out: NativeOutput, levels: tuple[int, ...] = (1, 2, 3)) -> dict[int, torch.Tensor]:
    """``{level: long[B, H, W]}``: hard group label per image pixel for each level (see module doc)."""
    hi, wi = out.image_size
    h4, w4 = out.assignments[0].in_size
    maps = {}
    for level in levels:
        lab = out.chain(level).argmax(-1).reshape(-1, 1, h4, w4)  # [B, 1, Hp/4, Wp/4]
        up = F.interpolate(lab.float(), scale_factor=4, mode="nearest").long()[:, 0]
        maps[level] = up[:, :hi, :wi]
    return maps


@torch.no_grad()
def segment_hierarchy(backbone: NativeBackbone, images: torch.Tensor,
                      levels: tuple[int, ...] = (1, 2, 3)) -> dict[int, torch.Tensor]:
    """Run ``backbone`` on ``images float[B, 3, H, W]`` and return :func:`hierarchy_maps`."""
    return hierarchy_maps(backbone(images), levels)


def render_segments(image, labels, seed: int = 0, alpha: float = 0.55, boundary=(255, 255, 255)):
    """``uint8[H, W, 3]``: ``image`` (uint8 RGB, same size) blended with a random colour per
    segment id of ``labels int[H, W]`` (ids < 0 left uncoloured), segment boundaries drawn in
    ``boundary``. Colours depend on the id and ``seed`` only."""
    import numpy as np

    from vitp.metrics.superpixel import boundary_map

    image, labels = np.asarray(image), np.asarray(labels)
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 256, size=(int(max(labels.max(), 0)) + 1, 3)).astype(np.float32)
    colour = palette[np.clip(labels, 0, None)]
    out = image.astype(np.float32)
    keep = labels >= 0
    out[keep] = (1 - alpha) * out[keep] + alpha * colour[keep]
    out[boundary_map(labels)] = boundary
    return out.clip(0, 255).astype(np.uint8)
