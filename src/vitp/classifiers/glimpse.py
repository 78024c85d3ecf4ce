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
With ``fit_box=True`` the window is the segment's bounding box (a square around it, 10 % margin, at
least ``size`` pixels) instead of a fixed window around the point: the outline of any object,
however small or large, fills the same ``samples x samples`` grid (as RoIAlign does for mask heads).

Beyond the paper (ViT-P's point token carries only a position); opt-in via
``PointViT(glimpse=GlimpseSettings(...))`` (one ``glimpse:`` block in YAML). Without masks it reads only the image and the
point, so the classifier's contract (``images``, ``points`` -> logits) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitp.points import mask_boxes
from vitp.structures import PointMasks


@dataclass(frozen=True)
class GlimpseSettings:
    """A point's glimpse, as ``PointViT(glimpse=...)`` builds it.

    Args:
        window: G, the window side in pixels of the classifier's (rescaled) input image (the
            smallest side with ``fit_box``); >= 4.
        samples: samples per window side (default: one per pixel); the glimpse CNN's cost grows
            with its square.
        masks: the glimpse also reads the window of each point's own segment mask (``point_masks``
            of ``forward``: ground truth in training, the proposal at inference), so the outline
            comes from the mask.
        fit_box: with ``masks``, the window is the square around the point's segment's bounding box
            (10 % margin, side >= ``window``): every outline, small or large, fills the same grid.
        head: also classify each point from its glimpse alone (a linear head on the glimpse
            embedding, logits added to the ViT's): a direct path for the shape read from the window.
    """

    window: int = 16
    samples: int | None = None
    masks: bool = False
    fit_box: bool = False
    head: bool = False


class PointGlimpse(nn.Module):
    """``[B, P, D]`` embedding of the input-image window around each point.

    Args:
        size: window side in pixels of the classifier's (rescaled) input image (the smallest side
            with ``fit_box``); >= 4.
        embed_dim: D, the point token width.
        samples: samples per window side (default ``size``: one per pixel); fewer make the CNN
            cheaper (its cost grows with ``samples ** 2``) at a coarser view of the window.
        width: channels of the first convolution (doubling per stride-2 step).
        masks: add the window of the point's segment mask as a fourth channel (needs ``PointMasks``).
        fit_box: with ``masks``, the window is the square around the point's segment's bounding box
            (10 % margin, side >= ``size``) rather than ``size`` pixels around the point.
    """

    def __init__(self, size: int, embed_dim: int, samples: int | None = None, width: int = 16,
                 masks: bool = False, fit_box: bool = False) -> None:
        super().__init__()
        samples = size if samples is None else samples
        if size < 4 or samples < 4:
            raise ValueError(f"the glimpse window must be >= 4 pixels and samples, got {size} pixels, {samples} samples")
        if fit_box and not masks:
            raise ValueError("fitting the glimpse to the segment's box needs the masks (masks=True)")
        self.size, self.samples = int(size), int(samples)
        self.masks, self.fit_box = bool(masks), bool(fit_box)
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

    def _grid(self, centres: torch.Tensor, extents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample centres ``(rows, cols) float[..., n]`` in input pixels of windows of side ``extents
        [...]`` centred on ``centres [..., 2]``."""
        frac = (torch.arange(self.samples, device=centres.device, dtype=torch.float32) + 0.5) / self.samples - 0.5
        step = extents.float()[..., None] * frac
        return centres[..., 0:1].float() + step, centres[..., 1:2].float() + step

    def geometry(self, points: torch.Tensor, valid_sizes: torch.Tensor,
                 point_masks: PointMasks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Window centres ``float[B, P, 2]`` (input pixels) and sides ``float[B, P]``: the point and
        ``size``, or (``fit_box``) the point's segment's box, for points that have a non-empty mask."""
        vs = valid_sizes.float()[:, None, :]
        centres = (points.float() + 1) / 2 * vs
        extents = torch.full(points.shape[:2], float(self.size), device=points.device)
        if not self.fit_box or point_masks is None:
            return centres, extents
        for b, stack in enumerate(point_masks.masks):
            N, h, w = stack.shape
            if N == 0:
                continue
            box = mask_boxes(stack.bool()).to(points.device)  # [N, 4] inclusive; (big, big, -1, -1) when empty
            nonempty = box[:, 2] >= 0
            box = box.float()
            box[:, 2:] += 1  # ends exclusive
            scale = torch.tensor([h, w, h, w], device=points.device, dtype=torch.float32) / valid_sizes[b].float().repeat(2)
            box = box / scale  # input pixels
            idx = point_masks.index[b].to(points.device)
            has = (idx >= 0) & nonempty[idx.clamp(min=0)]
            mine = box[idx.clamp(min=0)]
            side = torch.maximum(mine[:, 2] - mine[:, 0], mine[:, 3] - mine[:, 1]) * 1.1
            centres[b] = torch.where(has[:, None], (mine[:, :2] + mine[:, 2:]) / 2, centres[b])
            extents[b] = torch.where(has, side.clamp(min=float(self.size)), extents[b])
        return centres, extents

    def windows(self, images: torch.Tensor, centres: torch.Tensor, extents: torch.Tensor) -> torch.Tensor:
        """``float[B * P, 3, n, n]`` (n = ``samples``): bilinear samples of ``images [B, 3, H, W]`` on
        the grid of each window (``centres [B, P, 2]`` and sides ``extents [B, P]`` in pixels of the
        images); zero outside the frame (the padding value of the input)."""
        B, P, _ = centres.shape
        H, W = images.shape[-2:]
        n = self.samples
        rows, cols = self._grid(centres, extents)  # [B, P, n]
        ys, xs = rows / H * 2 - 1, cols / W * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(xs[..., None, :], ys[..., :, None]), dim=-1)  # [B, P, n, n, 2]
        out = F.grid_sample(images, grid.reshape(B, P * n, n, 2).to(images.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # [B, 3, P * n, n]
        return out.reshape(B, 3, P, n, n).transpose(1, 2).reshape(B * P, 3, n, n)

    def mask_windows(self, point_masks: PointMasks, centres: torch.Tensor, extents: torch.Tensor,
                     valid_sizes: torch.Tensor) -> torch.Tensor:
        """``float[B * P, 1, n, n]``: each point's window of its own segment mask, on the same grid as
        :meth:`windows` (input pixels, ``valid_sizes`` of the classifier's input) mapped onto the
        mask's resolution, read at the nearest mask pixel (a gather: no per-point copy of the mask);
        zero outside the mask's image and for points without a mask."""
        B, P, _ = centres.shape
        if tuple(point_masks.index.shape) != (B, P):
            raise ValueError(f"point_masks.index is {tuple(point_masks.index.shape)} for {B} x {P} points")
        n = self.samples
        rows, cols = self._grid(centres, extents)  # [B, P, n]
        out = []
        for b in range(B):
            stack, idx = point_masks.masks[b], point_masks.index[b].to(centres.device)
            N, h, w = stack.shape
            if N == 0:
                out.append(centres.new_zeros(P, 1, n, n, dtype=torch.float32))
                continue
            ys = (rows[b] * (h / valid_sizes[b, 0].float())).floor().long()  # [P, n] mask rows
            xs = (cols[b] * (w / valid_sizes[b, 1].float())).floor().long()
            inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :] & (idx >= 0)[:, None, None]
            flat = (idx.clamp(min=0)[:, None, None] * h + ys.clamp(0, h - 1)[:, :, None]) * w + xs.clamp(0, w - 1)[:, None, :]
            values = stack.to(centres.device).reshape(-1)[flat].float()
            out.append((values * inside.float())[:, None])
        return torch.cat(out)

    def forward(self, images: torch.Tensor, points: torch.Tensor, valid_sizes: torch.Tensor,
                point_masks: PointMasks | None = None) -> torch.Tensor:
        B, P, _ = points.shape
        if P == 0:
            return points.new_zeros(B, 0, self.proj.out_features)
        if self.masks and point_masks is None:
            raise ValueError("a mask-aware point glimpse needs the mask of every point (point_masks)")
        centres, extents = self.geometry(points, valid_sizes, point_masks)
        windows = self.windows(images, centres, extents)
        if self.masks:
            masks = self.mask_windows(point_masks, centres, extents, valid_sizes)
            windows = torch.cat([windows, masks.to(windows.dtype)], 1)
        features = self.convs(windows)
        return self.proj(features.flatten(1)).reshape(B, P, -1)
