"""Loading local checkpoints into ``PointViT``, refusing silently wrong loads."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_PATCH_KEY = "patch_embed.proj.weight"


@dataclass
class LoadReport:
    """What a checkpoint load did.

    format: ``"vitp"`` (a PointViT / Lightning checkpoint) or ``"timm"`` (a bare ViT state dict, timm
        or original DINOv2 naming).
    missing: parameters of the classifier that the checkpoint did not provide (kept at their init).
    unexpected: checkpoint entries that the classifier has no use for (ignored).
    skipped: entries outside the classifier's prefix in a larger checkpoint (e.g. a proposer's).
    reinitialized: parameters re-initialised because their shape differed (head, ``reinit_head``).
    """

    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)


def read_state_dict(source: str | Path | dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint file or dict -> flat ``{name: tensor}`` (unwraps ``state_dict`` / ``model``)."""
    if isinstance(source, (str, Path)):
        try:
            sd = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as err:  # e.g. a Lightning checkpoint with custom hyper-parameter objects
            log.warning("weights_only load of %s failed (%s); retrying with weights_only=False", source, err)
            sd = torch.load(source, map_location="cpu", weights_only=False)
    else:
        sd = source
    for key in ("state_dict", "model", "model_state_dict", "teacher"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise ValueError(f"checkpoint {source!r} does not hold a state dict")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _prefix_of(keys: list[str], suffix: str) -> str | None:
    hits = [k[: -len(suffix)] for k in keys if k.endswith(suffix)]
    return min(hits, key=len) if hits else None


def _filter_backbone(sd: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """timm's own conversion (original DINOv2 naming, pos-embed resampling) when available."""
    try:
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    except ImportError:  # pragma: no cover - very old / new timm
        return sd
    if not isinstance(backbone, VisionTransformer):
        return sd
    return checkpoint_filter_fn(dict(sd), backbone)


def load_into(
    model: nn.Module,
    source: str | Path | dict[str, Any],
    reinit_head: bool,
    head_names: tuple[str, ...] = ("head.weight", "head.bias"),
) -> LoadReport:
    """Load ``source`` into a PointViT-like ``model`` (with ``backbone``, ``head``, ...).

    Raises ``RuntimeError`` when a backbone parameter is missing, has the wrong shape, or the
    checkpoint has transformer blocks the backbone lacks; or when the head's shape differs and
    ``reinit_head`` is False.
    """
    sd = read_state_dict(source)
    keys = list(sd)
    own = model.state_dict()
    skipped: list[str] = []
    prefix = _prefix_of(keys, "backbone." + _PATCH_KEY)
    if prefix is not None:
        fmt = "vitp"
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        skipped = [k for k in keys if not k.startswith(prefix)]
        backbone_sd = {k[len("backbone."):]: v for k, v in sub.items() if k.startswith("backbone.")}
        extra = {k: v for k, v in sub.items() if not k.startswith("backbone.")}
    else:
        fmt = "timm"
        prefix = _prefix_of(keys, _PATCH_KEY)
        if prefix is None:
            raise RuntimeError(
                f"checkpoint has no '{_PATCH_KEY}' entry: not a ViT / PointViT checkpoint "
                f"(first keys: {keys[:5]})"
            )
        backbone_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        skipped = [k for k in keys if not k.startswith(prefix)]
        extra = {}
    backbone_sd = _filter_backbone(backbone_sd, model.backbone)
    full = {"backbone." + k: v for k, v in backbone_sd.items()}
    full.update(extra)

    missing = [k for k in own if k not in full]
    unexpected = [k for k in full if k not in own]
    mismatched = [k for k in full if k in own and full[k].shape != own[k].shape]

    errors = []
    bad_missing = [k for k in missing if k.startswith("backbone.")]
    if bad_missing:
        errors.append(f"backbone parameters missing from the checkpoint: {bad_missing[:10]}")
    bad_shape = [k for k in mismatched if k not in head_names]
    if bad_shape:
        errors.append(
            "shape mismatch: "
            + ", ".join(f"{k} {tuple(full[k].shape)} vs model {tuple(own[k].shape)}" for k in bad_shape[:10])
        )
    extra_blocks = [k for k in unexpected if k.startswith("backbone.blocks.")]
    if extra_blocks:
        errors.append(f"checkpoint has transformer blocks the backbone lacks: {extra_blocks[:5]}")
    head_bad = [k for k in mismatched if k in head_names]
    reinitialized: list[str] = []
    if head_bad:
        if not reinit_head:
            errors.append(
                f"head shape {tuple(full[head_bad[0]].shape)} in the checkpoint differs from the model's "
                f"{tuple(own[head_bad[0]].shape)} (different num_classes?); pass reinit_head=True to "
                "re-initialise the head"
            )
        else:
            for k in head_names:
                full.pop(k, None)
            reinitialized = list(head_names)
    if errors:
        raise RuntimeError(f"refusing to load {source if isinstance(source, (str, Path)) else 'state dict'}: "
                           + "; ".join(errors))

    model.load_state_dict(full, strict=False)
    if reinitialized:
        model.reset_head()
    report = LoadReport(
        format=fmt,
        missing=missing,
        unexpected=unexpected,
        skipped=skipped,
        reinitialized=reinitialized,
    )
    log.info(
        "loaded %s checkpoint: missing (kept init) %s, unexpected (ignored) %s, re-initialised %s, "
        "%d entries outside the classifier skipped",
        fmt, report.missing, report.unexpected, report.reinitialized, len(skipped),
    )
    if unexpected:
        log.warning("checkpoint entries ignored by PointViT: %s", unexpected)
    return report
