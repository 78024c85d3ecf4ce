"""Joint pixel histograms, the one per-pixel pass every metric here needs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def joint_histogram(a: Tensor, b: Tensor, na: int, nb: int, a_offset: int = 0, b_offset: int = 0) -> Tensor:
    """``long[na, nb]`` counts of the pixel pairs ``(a + a_offset, b + b_offset)``.

    On CPU the pixel passes run in NumPy (single-threaded, and unlike torch's intra-op thread pool
    not slowed down by a busy machine); on an accelerator they run in torch on that device.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    const = a_offset * nb + b_offset
    if a.device.type == "cpu" and b.device.type == "cpu":
        an = a.detach().reshape(-1).numpy().astype(np.int64, copy=False)
        bn = b.detach().reshape(-1).numpy().astype(np.int64, copy=False)
        combined = an * nb
        combined += bn
        if const:
            combined += const
        hist = torch.from_numpy(np.bincount(combined, minlength=na * nb))
    else:
        b = b.to(a.device)
        combined = torch.add(b.reshape(-1).long(), a.reshape(-1).long(), alpha=nb)
        if const:
            combined += const
        hist = torch.bincount(combined, minlength=na * nb)
    if hist.numel() != na * nb:
        raise ValueError(f"values out of range for a {na} x {nb} histogram")
    return hist.view(na, nb)
