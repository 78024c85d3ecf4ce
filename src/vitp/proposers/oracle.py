"""Ground-truth segments as proposals: upper bounds, tests and ablations."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from vitp.points import erode
from vitp.proposers.base import MaskProposer
from vitp.structures import Proposals, Target, check_task


class OracleProposer(MaskProposer):
    """Turns each ground-truth segment into one proposal.

    Mask logits are ``+logit_scale`` inside the segment and ``-logit_scale`` outside, given at the
    original image size (``Proposals.valid_sizes`` says where each image lies), so post-processing
    reproduces the ground truth exactly. Class logits are one-hot (``None`` when
    ``class_agnostic``). Optional noise, deterministic per image for a given ``seed``, turns it into
    a realistic imperfect predictor.

    Args:
        num_classes: number of dataset classes (linked from the data module).
        class_agnostic: give no class logits, so a point classifier alone decides classes.
        label_noise: fraction of segments given a random wrong class.
        drop: fraction of segments removed.
        jitter: masks eroded or dilated by up to this many pixels (random per segment).
        logit_scale: magnitude of the mask and class logits.
        interior_peak: inside a segment, raise the logit by up to 1 towards its most interior pixel
            (distance to the boundary), so the most confident pixel of a proposal — the ViT-P point —
            lies deep inside it, as for a trained proposer; binarised masks are unchanged.
        seed: noise seed.
        class_names: dataset class names (linked; unused).
        is_thing: dataset thing flags (linked; unused).
    """

    needs_targets = True

    def __init__(
        self,
        num_classes: int | None = None,
        class_agnostic: bool = False,
        label_noise: float = 0.0,
        drop: float = 0.0,
        jitter: int = 0,
        logit_scale: float = 20.0,
        interior_peak: bool = True,
        seed: int = 0,
        class_names: list[str] | None = None,
        is_thing: list[bool] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("label_noise", label_noise), ("drop", drop)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"OracleProposer: {name} must be in [0, 1], got {value}")
        if jitter < 0:
            raise ValueError(f"OracleProposer: jitter must be >= 0, got {jitter}")
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.label_noise = label_noise
        self.drop = drop
        self.jitter = jitter
        self.logit_scale = logit_scale
        self.interior_peak = interior_peak
        self.seed = seed

    def _generator(self, target: Target) -> torch.Generator:
        key = f"{self.seed}:{target.image_id}".encode()
        return torch.Generator().manual_seed(zlib.crc32(key))

    def _noisy_segments(self, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's (masks bool[N, H0, W0], labels long[N]) after noise."""
        n = len(target.labels)
        device = target.segments.device
        ids = torch.arange(n, device=device)
        masks = target.segments[None] == ids[:, None, None]
        labels = target.labels.clone()
        if n == 0 or not (self.label_noise or self.drop or self.jitter):
            return masks, labels
        gen = self._generator(target)
        if self.drop:
            keep = (torch.rand(n, generator=gen) >= self.drop).to(device)
            masks, labels = masks[keep], labels[keep]
        if self.label_noise and self.num_classes and self.num_classes > 1:
            flip = (torch.rand(len(labels), generator=gen) < self.label_noise).to(device)
            shift = torch.randint(1, self.num_classes, (len(labels),), generator=gen).to(device)
            labels = torch.where(flip, (labels + shift) % self.num_classes, labels)
        if self.jitter and len(labels):
            radius = torch.randint(-self.jitter, self.jitter + 1, (len(labels),), generator=gen)
            masks = torch.stack([_morph(m, int(r)) for m, r in zip(masks, radius.tolist())])
        return masks, labels

    def forward(
        self, images: torch.Tensor, task: str = "panoptic", targets: list[Target] | None = None
    ) -> Proposals:
        check_task(task)
        if targets is None:
            raise ValueError("OracleProposer needs the ground-truth targets")
        if not self.class_agnostic and self.num_classes is None:
            raise ValueError("OracleProposer: num_classes is not set (link it from the data module)")
        per_image = [self._noisy_segments(t) for t in targets]
        q = max(1, max(len(labels) for _, labels in per_image))
        height = max(t.orig_size[0] for t in targets)
        width = max(t.orig_size[1] for t in targets)
        s = self.logit_scale
        mask_logits = images.new_full((len(targets), q, height, width), -s)
        k = 1 if self.class_agnostic else self.num_classes
        class_logits = images.new_full((len(targets), q, k + 1), -s)
        class_logits[..., -1] = s
        for b, (masks, labels) in enumerate(per_image):
            h, w = masks.shape[-2:]
            region = mask_logits[b, : len(labels), :h, :w]
            region[masks] = s
            if self.interior_peak and len(labels):
                region += _interior_bonus(masks).to(region)
            class_logits[b, : len(labels), -1] = -s
            cols = torch.zeros_like(labels) if self.class_agnostic else labels
            class_logits[b, torch.arange(len(labels)), cols] = s
        valid = torch.tensor([t.orig_size for t in targets], dtype=torch.long, device=images.device)
        return Proposals(
            mask_logits=mask_logits,
            class_logits=None if self.class_agnostic else class_logits,
            objectness=class_logits[..., 0].sigmoid() if self.class_agnostic else None,
            valid_sizes=valid,
        )


def _interior_bonus(masks: torch.Tensor) -> torch.Tensor:
    """``float[N, H, W]`` in [0, 1]: distance to the segment boundary, normalised per segment."""
    from scipy.ndimage import distance_transform_edt

    out = np.zeros(masks.shape, dtype=np.float32)
    for i, mask in enumerate(masks.cpu().numpy()):
        if mask.any():
            dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
            out[i] = dist / dist.max()
    return torch.from_numpy(out)


def _morph(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate (radius > 0) or erode (radius < 0) a bool mask with a square window (the image
    border neither erodes nor dilates)."""
    if radius >= 0:
        return ~erode(~mask[None], radius)[0]
    return erode(mask[None], -radius)[0]
