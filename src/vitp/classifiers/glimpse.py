"""A point's glimpse: a small CNN embedding of the pixel window centred on the point.

A from-scratch ViT with 16-pixel patches sees an object smaller than a patch as one token: it can
read the object's colour and texture but hardly its outline, and it cannot tell a small closed
shape from a patch of background texture. :class:`PointGlimpse` gives every point token, at its
embedding, what a ``size x size`` pixel window of the classifier's own input image around the point
looks like: 3x3 stride-2 convolutions down to a ``<= 4 x 4`` map, flattened (so the layout of the
window is kept) and projected to the token width. The projection starts at zero, so an untrained
glimpse changes nothing and the point token starts exactly as without it.

With ``masks=True`` the window has a fourth channel: the same window of the point's own segment
mask (:class:`PointMasks`: a ground-truth segment in training, the proposal being classified at
inference). The outline is then read from the mask itself, whatever the object's colour or texture.

Beyond the paper (ViT-P's point token carries only a position); opt-in via
``PointViT(point_glimpse=..., point_glimpse_masks=...)``. Without masks it reads only the image and the
point, so the classifier's contract (``images``, ``points`` -> logits) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PointMasks:
    """The segment mask each query point belongs to.

    masks: per image ``[N_b, h_b, w_b]`` (bool or float in [0, 1]) covering exactly the image's valid
        region (any resolution: a point's window is mapped onto it).
    index: ``long[B, P]``, the mask of each point in its image's stack; -1 = none (an empty mask).
    """

    masks: list[torch.Tensor]
    index: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.masks) != self.index.shape[0]:
            raise ValueError(f"PointMasks: {len(self.masks)} mask stacks for {self.index.shape[0]} images")
        for b, (m, idx) in enumerate(zip(self.masks, self.index)):
            if m.dim() != 3:
                raise ValueError(f"PointMasks: image {b}'s masks must be [N, h, w], got {tuple(m.shape)}")
            if len(idx) and int(idx.max()) >= len(m):
                raise ValueError(f"PointMasks: image {b} has {len(m)} masks, a point refers to mask {int(idx.max())}")

    def points(self, start: int, stop: int) -> "PointMasks":
        """The masks of points ``start:stop`` (same stacks)."""
        return PointMasks(self.masks, self.index[:, start:stop])


class PointGlimpse(nn.Module):
    """``[B, P, D]`` embedding of the ``size x size`` input-image window centred on each point.

    Args:
        size: window side in pixels of the classifier's (rescaled) input image; >= 4.
        embed_dim: D, the point token width.
        samples: samples per window side (default ``size``: one per pixel); fewer make the CNN
            cheaper (its cost grows with ``samples ** 2``) at a coarser view of the window.
        width: channels of the first convolution (doubling per stride-2 step).
        masks: add the window of the point's segment mask as a fourth channel (needs ``PointMasks``).
    """

    def __init__(self, size: int, embed_dim: int, samples: int | None = None, width: int = 16,
                 masks: bool = False) -> None:
        super().__init__()
        samples = size if samples is None else samples
        if size < 4 or samples < 4:
            raise ValueError(f"point_glimpse must be >= 4 pixels and samples, got {size} pixels, {samples} samples")
        self.size, self.samples = int(size), int(samples)
        self.masks = bool(masks)
        layers: list[nn.Module] = []
        channels, side = 4 if self.masks else 3, self.samples
        while side > 4:
            out = width * 2 ** (len(layers) // 3)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels, side = out, (side + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(channels * side * side, embed_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def _offsets(self, device: torch.device) -> torch.Tensor:
        """Sample centres relative to the point, in input pixels (``[samples]``)."""
        step = self.size / self.samples
        return (torch.arange(self.samples, device=device, dtype=torch.float32) + 0.5) * step - self.size / 2

    def windows(self, images: torch.Tensor, points: torch.Tensor, valid_sizes: torch.Tensor) -> torch.Tensor:
        """``float[B * P, 3, n, n]`` (n = ``samples``): bilinear samples of ``images [B, 3, H, W]`` on
        the grid centred on each point (``points [B, P, 2]``, (y, x) in [-1, 1] of the valid region
        ``valid_sizes long[B, 2]``); zero outside the frame (the padding value of the input)."""
        B, P, _ = points.shape
        H, W = images.shape[-2:]
        n = self.samples
        centre = (points.float() + 1) / 2 * valid_sizes.float()[:, None, :]  # pixel units
        offsets = self._offsets(images.device)
        ys = (centre[..., 0:1] + offsets) / H * 2 - 1  # [B, P, n]
        xs = (centre[..., 1:2] + offsets) / W * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(xs[..., None, :], ys[..., :, None]), dim=-1)  # [B, P, n, n, 2]
        out = F.grid_sample(images, grid.reshape(B, P * n, n, 2).to(images.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # [B, 3, P * n, n]
        return out.reshape(B, 3, P, n, n).transpose(1, 2).reshape(B * P, 3, n, n)

    def mask_windows(self, point_masks: PointMasks, points: torch.Tensor, valid_sizes: torch.Tensor) -> torch.Tensor:
        """``float[B * P, 1, n, n]``: each point's window of its own segment mask, on the same grid as
        :meth:`windows` (``valid_sizes`` of the classifier's input) mapped onto the mask's resolution,
        read at the nearest mask pixel (a gather: no per-point copy of the mask); zero outside the
        mask's image and for points without a mask."""
        B, P, _ = points.shape
        if tuple(point_masks.index.shape) != (B, P):
            raise ValueError(f"point_masks.index is {tuple(point_masks.index.shape)} for {B} x {P} points")
        n = self.samples
        offsets = self._offsets(points.device)
        out = []
        for b in range(B):
            stack, idx = point_masks.masks[b], point_masks.index[b].to(points.device)
            N, h, w = stack.shape
            if N == 0:
                out.append(points.new_zeros(P, 1, n, n, dtype=torch.float32))
                continue
            scale = torch.stack([h / valid_sizes[b, 0].float(), w / valid_sizes[b, 1].float()])
            centre = (points[b].float() + 1) / 2 * valid_sizes[b].float()  # input pixels
            ys = ((centre[:, 0:1] + offsets) * scale[0]).floor().long()  # [P, n] mask rows
            xs = ((centre[:, 1:2] + offsets) * scale[1]).floor().long()
            inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :] & (idx >= 0)[:, None, None]
            flat = (idx.clamp(min=0)[:, None, None] * h + ys.clamp(0, h - 1)[:, :, None]) * w + xs.clamp(0, w - 1)[:, None, :]
            values = stack.to(points.device).reshape(-1)[flat].float()
            out.append((values * inside.float())[:, None])
        return torch.cat(out)

    def forward(self, images: torch.Tensor, points: torch.Tensor, valid_sizes: torch.Tensor,
                point_masks: PointMasks | None = None) -> torch.Tensor:
        B, P, _ = points.shape
        if P == 0:
            return points.new_zeros(B, 0, self.proj.out_features)
        windows = self.windows(images, points, valid_sizes)
        if self.masks:
            if point_masks is None:
                raise ValueError("a mask-aware point glimpse needs the mask of every point (point_masks)")
            windows = torch.cat([windows, self.mask_windows(point_masks, points, valid_sizes).to(windows.dtype)], 1)
        features = self.convs(windows)
        return self.proj(features.flatten(1)).reshape(B, P, -1)
