"""``ViewMemo``: a frozen trunk's outputs remembered per training view.

A frozen ViT trunk is a pure function of its input pixels. When training repeats views (no scale
jitter: each image comes as itself or flipped), the trunk's tokens for a view seen before can be
reused instead of recomputed. ``ViewMemo`` keys each image of a batch by a hash of its exact bytes
(after any resizing into the model's frame), runs the trunk only on the images it has not seen, and
stacks remembered and fresh rows back into batch order. Used by ``EomtProposer`` and ``PointViT``
(``trunk_cache_size``); it is off (capacity 0) unless a config asks for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch


class ViewMemo:
    """Remember ``compute(images)`` row by row for up to ``capacity`` distinct images.

    ``compute`` maps ``[B, C, H, W]`` to a list of tensors whose first dimension is ``B``. Rows are
    stored detached; once full, new views are computed but not stored (no eviction: the first
    epoch's views are the ones that repeat).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._rows: dict[bytes, list[torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        data = image.detach().cpu().contiguous().numpy().tobytes()
        return hashlib.blake2b(data, digest_size=16).digest() + str(tuple(image.shape)).encode()

    def __call__(self, images: torch.Tensor, compute: Callable[[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
        if self.capacity == 0:
            return compute(images)
        keys = [self.key(img) for img in images]
        todo = [i for i, k in enumerate(keys) if k not in self._rows]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        fresh: dict[int, list[torch.Tensor]] = {}
        if todo:
            outputs = compute(images[todo])
            for j, i in enumerate(todo):
                fresh[i] = [t[j].detach() for t in outputs]
                if len(self._rows) < self.capacity and keys[i] not in self._rows:
                    self._rows[keys[i]] = fresh[i]
        rows = [fresh[i] if i in fresh else self._rows[k] for i, k in enumerate(keys)]
        return [torch.stack([row[n] for row in rows]) for n in range(len(rows[0]))]
