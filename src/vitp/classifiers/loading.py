"""Loading local checkpoints into ``PointViT``, refusing silently wrong loads."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitp.checkpoint_heads import classifier_head_message
from vitp.weights.keymaps import detect_format, hf_dinov2_to_original, reference_to_pointvit

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What a checkpoint load did.

    format: ``"vitp"`` (a PointViT / Lightning checkpoint), ``"vitp-reference"`` (an official ViT-P
        classifier), ``"hf-dinov2"`` (Hugging Face DINOv2) or ``"timm"`` (timm or original DINOv2).
    missing: parameters of the classifier that the checkpoint did not provide (kept at their init).
    unexpected: checkpoint entries that the classifier has no use for (ignored; only possible with
        ``strict=False``, or a pretraining classification head of a timm / HF checkpoint).
    skipped: entries outside the classifier's prefix in a larger checkpoint (e.g. a proposer's).
    reinitialized: parameters re-initialised because their shape differed (head, ``reinit_head``).
    """

    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)


def read_state_dict(source: str | Path | dict[str, Any], allow_unsafe_load: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint file (``.safetensors`` or a torch file) or dict -> flat ``{name: tensor}``
    (unwraps ``state_dict`` / ``model`` / ``teacher``).

    Torch files are read with ``weights_only=True``. A file that needs arbitrary unpickling is
    refused (it could run code) unless ``allow_unsafe_load`` is set; the error names the file and
    that option. A truncated or corrupt file raises ``RuntimeError`` naming it.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                sd = load_file(str(path))
            except Exception as err:  # safetensors raises its own error types
                raise RuntimeError(f"{path}: not a readable safetensors file ({err})") from err
        else:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                if not allow_unsafe_load:
                    raise RuntimeError(
                        f"{path}: refusing to unpickle it (weights_only load failed: {str(err).splitlines()[0]}); "
                        "loading it could run arbitrary code. If you trust the file, pass "
                        "allow_unsafe_load=True (PointViT: --model.init_args.classifier.init_args."
                        "allow_unsafe_load true)") from err
                log.warning("%s: loading with weights_only=False (allow_unsafe_load=True)", path)
                sd = torch.load(path, map_location="cpu", weights_only=False)
            except (RuntimeError, EOFError, OSError) as err:
                raise RuntimeError(f"{path}: not a readable checkpoint, truncated or corrupt? ({err})") from err
    else:
        sd = source
    for key in ("state_dict", "model", "model_state_dict", "teacher"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise ValueError(f"checkpoint {source!r} does not hold a state dict")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _filter_backbone(sd: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """timm's own conversion (original DINOv2 naming, pos-embed resampling) when available."""
    try:
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    except ImportError:  # pragma: no cover - very old / new timm
        return sd
    if not isinstance(backbone, VisionTransformer):
        return sd
    return checkpoint_filter_fn(dict(sd), backbone)


def _split(sd: dict[str, torch.Tensor]) -> tuple[str, dict, dict, list[str], list[str]]:
    """``(format, backbone state dict, PointViT extras, skipped keys, ignored keys)``."""
    keys = list(sd)
    try:
        fmt, prefix = detect_format(keys)
    except ValueError as err:
        raise RuntimeError(f"checkpoint is not a ViT / PointViT checkpoint: {err}") from err
    skipped = [k for k in keys if not k.startswith(prefix)]
    ignored: list[str] = []
    if fmt == "vitp":
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        backbone = {k[len("backbone."):]: v for k, v in sub.items() if k.startswith("backbone.")}
        extras = {k: v for k, v in sub.items() if not k.startswith("backbone.")}
    elif fmt == "vitp-reference":
        backbone, extras = reference_to_pointvit(sd, prefix)
    elif fmt == "hf-dinov2":
        backbone, extras = hf_dinov2_to_original(sd, prefix), {}
    else:
        backbone = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        extras = {}
    if fmt in ("timm", "hf-dinov2"):  # a pretraining classification head is not ours
        ignored = [k for k in backbone if k.startswith(("head.", "fc_norm."))]
        backbone = {k: v for k, v in backbone.items() if k not in ignored}
    return fmt, backbone, extras, skipped, ignored


def load_into(
    model: nn.Module,
    source: str | Path | dict[str, Any],
    reinit_head: bool,
    head_names: tuple[str, ...] = ("head.weight", "head.bias"),
    strict: bool = True,
    allow_unsafe_load: bool = False,
) -> LoadReport:
    """Load ``source`` into a PointViT-like ``model`` (with ``backbone``, ``head``, ...), from any
    format of ``vitp.weights.keymaps.detect_format``.

    Raises ``RuntimeError`` when a backbone parameter is missing, has the wrong shape, or the
    checkpoint has transformer blocks the backbone lacks; when the head's shape differs and
    ``reinit_head`` is False; and, with ``strict``, when any other checkpoint entry has no place in
    the model (a pretraining classification head of a timm / HF checkpoint is ignored, and listed).

    Long because it is one ordered procedure (read, convert keys, reconcile the head, load, report)
    whose steps share the key report.
    """
    sd = read_state_dict(source, allow_unsafe_load)
    own = model.state_dict()
    fmt, backbone_sd, extra, skipped, ignored = _split(sd)
    backbone_sd = _filter_backbone(backbone_sd, model.backbone)
    full = {"backbone." + k: v for k, v in backbone_sd.items()}
    full.update(extra)

    missing = [k for k in own if k not in full]
    unexpected = [k for k in full if k not in own]
    mismatched = [k for k in full if k in own and full[k].shape != own[k].shape]

    errors = []
    if strict and [k for k in unexpected if not k.startswith("backbone.blocks.")]:
        errors.append("entries with no place in the model (strict; pass strict_load=False to ignore them): "
                      f"{[k for k in unexpected if not k.startswith('backbone.blocks.')][:10]}")
    # the reference ViT-P drops the CLS token (its point tokens start from the CLS position embedding)
    allowed_missing = {"backbone.cls_token"} if fmt == "vitp-reference" else set()
    bad_missing = [k for k in missing if k.startswith("backbone.") and k not in allowed_missing]
    if "point_embed.weight" in unexpected and fmt == "vitp-reference":
        errors.append("an official ViT-P checkpoint carries the reference point embedding "
                      "(cls_embeddings.weight): build PointViT with point_encoding='linear'")
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
            errors.append(classifier_head_message(tuple(full[head_bad[0]].shape), tuple(own[head_bad[0]].shape)))
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
        unexpected=unexpected + ignored,
        skipped=skipped,
        reinitialized=reinitialized,
    )
    log.info(
        "loaded %s checkpoint: missing (kept init) %s, unexpected (ignored) %s, re-initialised %s, "
        "%d entries outside the classifier skipped",
        fmt, report.missing, report.unexpected, report.reinitialized, len(skipped),
    )
    if unexpected or ignored:
        log.warning("checkpoint entries ignored by PointViT: %s", unexpected + ignored)
    return report
