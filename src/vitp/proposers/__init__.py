"""Mask proposers: pure ``nn.Module``s producing ``Proposals`` (see ``vitp.proposers.base``).

Hugging Face proposers are imported lazily, so ``import vitp.proposers`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from vitp.proposers.base import MaskProposer
from vitp.proposers.oracle import OracleProposer

_LAZY = {
    "Mask2FormerProposer": "vitp.proposers.mask2former",
    "OneFormerProposer": "vitp.proposers.oneformer",
    "NativeProposer": "vitp.proposers.native",
    "NativeArchitecture": "vitp.proposers.native",
    "NativeLossSettings": "vitp.proposers.native",
    "EomtProposer": "vitp.proposers.eomt",
}

__all__ = ["MaskProposer", "OracleProposer", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitp.proposers' has no attribute {name!r}")
