"""Image + segment-map transforms (albumentations for the geometry).

Every transform takes an RGB ``uint8[H, W, 3]`` image and an optional segment index map
``int32[H, W]`` (index into the image's segment list, -1 = void) and returns the normalised image
``float[3, h, w]`` (unpadded; the collate function pads) and the transformed index map.
Resizing the *index map* with nearest-neighbour interpolation keeps all masks mutually exclusive
and aligned with the image; binary masks are derived from it afterwards.

Randomness comes from ``torch`` (an explicit ``torch.Generator`` or the global one), so
``seed_everything`` and the DataLoader's per-worker seeding make training runs reproducible.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``uint8[H, W, 3]`` -> ``float[3, H, W]`` with ``(x / 255 - mean) / std``."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return t.sub_(m).div_(s)


def _resize_long_side(max_size: int) -> A.BasicTransform:
    return A.LongestMaxSize(
        max_size=max_size,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        area_for_downscale="image",
    )


def _apply(transforms: list, image: np.ndarray, seg: np.ndarray | None):
    pipe = A.Compose(transforms)
    if seg is None:
        return pipe(image=image)["image"], None
    out = pipe(image=image, mask=seg)
    return out["image"], out["mask"]


class EvalTransform:
    """Resize the long side to ``image_size`` keeping the aspect ratio (up or down), normalise."""

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self, image: np.ndarray, seg: np.ndarray | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        img, seg = _apply([_resize_long_side(self.image_size)], image, seg)
        return normalize(img, self.mean, self.std), seg


class TrainTransform:
    """Scale jitter + random crop + horizontal flip, normalise.

    The long side is resized to ``image_size * s`` with ``s ~ U(scale_range)``; then a random crop
    of at most ``image_size x image_size`` is taken (no padding here: a smaller image stays
    smaller and the collate function pads it at the bottom/right); then a horizontal flip with
    probability ``hflip_prob``.
    """

    def __init__(
        self,
        image_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.scale_range = (float(lo), float(hi))
        self.hflip_prob = float(hflip_prob)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self, image: np.ndarray, seg: np.ndarray | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        def rand() -> float:
            return float(torch.rand((), generator=generator))

        lo, hi = self.scale_range
        s = lo + (hi - lo) * rand()
        h0, w0 = image.shape[:2]
        long_side = max(1, int(round(self.image_size * s)))
        scale = long_side / max(h0, w0)
        h, w = max(1, int(round(h0 * scale))), max(1, int(round(w0 * scale)))
        ch, cw = min(h, self.image_size), min(w, self.image_size)
        y0 = int((h - ch + 1) * rand()) if h > ch else 0
        x0 = int((w - cw + 1) * rand()) if w > cw else 0
        y0, x0 = min(y0, h - ch), min(x0, w - cw)
        ops: list = [
            A.Resize(height=h, width=w, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                     mask_interpolation=cv2.INTER_NEAREST),
            A.Crop(x_min=x0, y_min=y0, x_max=x0 + cw, y_max=y0 + ch),
        ]
        if rand() < self.hflip_prob:
            ops.append(A.HorizontalFlip(p=1.0))
        img, seg = _apply(ops, image, seg)
        return normalize(img, self.mean, self.std), seg
