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
        width: channels of the first convolution (doubling per stride-2 step).
        masks: add the window of the point's segment mask as a fourth channel (needs ``PointMasks``).
    """

    def __init__(self, size: int, embed_dim: int, width: int = 16, masks: bool = False) -> None:
        super().__init__()
        if size < 4:
            raise ValueError(f"point_glimpse must be >= 4 pixels, got {size}")
        self.size = int(size)
        self.masks = bool(masks)
        layers: list[nn.Module] = []
        channels, side = 4 if self.masks else 3, self.size
        while side > 4:
            out = width * 2 ** (len(layers) // 3)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels, side = out, (side + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(channels * side * side, embed_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def windows(self, images: torch.Tensor, points: torch.Tensor, valid_sizes: torch.Tensor) -> torch.Tensor:
        """``float[B * P, 3, size, size]``: bilinear samples of ``images [B, 3, H, W]`` on the pixel
        grid centred on each point (``points [B, P, 2]``, (y, x) in [-1, 1] of the valid region
        ``valid_sizes long[B, 2]``); zero outside the frame (the padding value of the input)."""
        B, P, _ = points.shape
        H, W = images.shape[-2:]
        g = self.size
        centre = (points.to(images.dtype) + 1) / 2 * valid_sizes.to(images.dtype)[:, None, :]  # pixel units
        offsets = torch.arange(g, device=images.device, dtype=images.dtype) - (g - 1) / 2
        ys = (centre[..., 0:1] + offsets) / H * 2 - 1  # [B, P, g]
        xs = (centre[..., 1:2] + offsets) / W * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(xs[..., None, :], ys[..., :, None]), dim=-1)  # [B, P, g, g, 2]
        out = F.grid_sample(images, grid.reshape(B, P * g, g, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # [B, 3, P * g, g]
        return out.reshape(B, 3, P, g, g).transpose(1, 2).reshape(B * P, 3, g, g)

    def mask_windows(self, point_masks: PointMasks, points: torch.Tensor, valid_sizes: torch.Tensor) -> torch.Tensor:
        """``float[B * P, 1, size, size]``: each point's window of its own segment mask, on the same
        pixel grid as :meth:`windows` (``valid_sizes`` of the classifier's input), mapped onto the
        mask's resolution; zero outside the mask's image and for points without a mask."""
        B, P, _ = points.shape
        if tuple(point_masks.index.shape) != (B, P):
            raise ValueError(f"point_masks.index is {tuple(point_masks.index.shape)} for {B} x {P} points")
        g = self.size
        offsets = torch.arange(g, device=points.device, dtype=torch.float32) - (g - 1) / 2
        out = []
        for b in range(B):
            stack, idx = point_masks.masks[b], point_masks.index[b].to(points.device)
            h, w = stack.shape[-2:]
            if len(stack) == 0:
                out.append(points.new_zeros(P, 1, g, g, dtype=torch.float32))
                continue
            masks = stack.to(points.device, torch.float32)[idx.clamp(min=0)][:, None]  # [P, 1, h, w]
            scale = torch.tensor([h, w], device=points.device, dtype=torch.float32) / valid_sizes[b].float()
            centre = (points[b].float() + 1) / 2 * valid_sizes[b].float()  # input pixels
            ys = (centre[:, 0:1] + offsets) * scale[0] / h * 2 - 1  # [P, g]
            xs = (centre[:, 1:2] + offsets) * scale[1] / w * 2 - 1
            grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)  # [P, g, g, 2]
            win = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out.append(win * (idx >= 0).float()[:, None, None, None])
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
