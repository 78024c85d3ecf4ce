"""vitp: universal image segmentation with ViT-P point classifiers and swappable mask proposers.

``from vitp import Segmenter`` (see ``vitp.api``) is imported lazily, so ``import vitp`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Segmenter", "SegmentationResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vitp import api

        return getattr(api, name)
    raise AttributeError(f"module 'vitp' has no attribute {name!r}")
