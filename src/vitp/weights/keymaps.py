"""Key maps between the ViT checkpoint formats users hold, as pure functions on state dicts.

Formats (``detect_format``):

* ``"vitp"``: a PointViT / ViTPModule state dict (``[prefix.]backbone.patch_embed.proj.weight``);
* ``"vitp-reference"``: an official ViT-P classifier checkpoint (hub repo ``Sajjad-Sh33/ViT-P``,
  e.g. ``model_ADE20k_798_250point.pth``): the DINOv2 backbone in original names (no
  ``cls_token``, an unused ``mask_token``), the point embedding ``cls_embeddings.weight [D, 2]`` and
  ``head.weight`` / ``head.bias``;
* ``"hf-dinov2"``: Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (``embeddings.*``,
  ``encoder.layer.N.*``; attention named ``q_proj`` ... ``o_proj`` (transformers 5) or
  ``attention.attention.query`` ... ``attention.output.dense`` (the hub files)), optionally under a
  ``dinov2.`` / ``backbone.`` prefix;
* ``"timm"``: timm or original DINOv2 names (``patch_embed.proj.weight``, ``blocks.N.*``); timm's
  own ``checkpoint_filter_fn`` handles the original naming (``mask_token``, ``register_tokens``).

``timm_to_eomt`` initialises HF EoMT's encoder from a timm DINOv2 state dict.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

PATCH_KEY = "patch_embed.proj.weight"
HF_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"
REFERENCE_POINT_KEY = "cls_embeddings.weight"

_HF_BLOCK = {  # HF Dinov2 layer suffix -> original DINOv2 / timm block suffix
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attention.o_proj.weight": "attn.proj.weight", "attention.o_proj.bias": "attn.proj.bias",
    "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.weights_in.weight": "mlp.w12.weight", "mlp.weights_in.bias": "mlp.w12.bias",
    "mlp.weights_out.weight": "mlp.w3.weight", "mlp.weights_out.bias": "mlp.w3.bias",
}
_HF_QKV = {  # layer suffix -> (q / k / v, weight / bias), transformers 5 names and the hub files' names
    f"attention.{name}.{kind}": (role, kind)
    for role, names in {"q": ("q_proj", "attention.query"), "k": ("k_proj", "attention.key"),
                        "v": ("v_proj", "attention.value")}.items()
    for name in names for kind in ("weight", "bias")
}


def _prefix_of(keys: list[str], suffix: str) -> str | None:
    hits = [k[: -len(suffix)] for k in keys if k.endswith(suffix)]
    return min(hits, key=len) if hits else None


def detect_format(keys: list[str]) -> tuple[str, str]:
    """``(format, prefix)`` of a flat state dict's keys (see the module docstring); ValueError when
    none fits."""
    prefix = _prefix_of(keys, "backbone." + PATCH_KEY)
    if prefix is not None:
        return "vitp", prefix
    prefix = _prefix_of(keys, HF_PATCH_KEY)
    if prefix is not None:
        return "hf-dinov2", prefix
    prefix = _prefix_of(keys, PATCH_KEY)
    if prefix is not None:
        fmt = "vitp-reference" if prefix + REFERENCE_POINT_KEY in keys else "timm"
        return fmt, prefix
    raise ValueError(f"not a ViT checkpoint: no '{PATCH_KEY}' or '{HF_PATCH_KEY}' entry (first keys: {keys[:5]})")


def hf_dinov2_to_original(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A HF ``Dinov2Model`` / ``Dinov2WithRegistersModel`` state dict in original DINOv2 names
    (``cls_token``, ``pos_embed`` with its class entry, ``register_tokens``, fused ``qkv``); raises
    ``ValueError`` naming entries it cannot place."""
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out: dict[str, torch.Tensor] = {"mask_token": sd.pop("embeddings.mask_token", torch.zeros(1, 1))}
    simple = {
        "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens", HF_PATCH_KEY: PATCH_KEY,
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    }
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    left = []
    for key, value in sd.items():
        if key in simple:
            out[simple[key]] = value
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key)
        if m is None:
            left.append(key)
            continue
        i, rest = int(m.group(1)), m.group(2)
        if rest in _HF_BLOCK:
            out[f"blocks.{i}.{_HF_BLOCK[rest]}"] = value
            continue
        if rest in _HF_QKV:
            role, kind = _HF_QKV[rest]
            qkv.setdefault(i, {})[f"{role}.{kind}"] = value
        else:
            left.append(key)
    if left:
        raise ValueError(f"HF DINOv2 entries with no original-DINOv2 name: {left[:8]}")
    for i, parts in qkv.items():
        for kind in ("weight", "bias"):
            found = [parts.get(f"{r}.{kind}") for r in "qkv"]
            if any(t is None for t in found):
                raise ValueError(f"HF DINOv2 layer {i}: query/key/value {kind} incomplete")
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(found, dim=0)  # type: ignore[arg-type]
    return out


def reference_to_pointvit(sd: dict[str, torch.Tensor], prefix: str = "") -> tuple[dict, dict]:
    """An official ViT-P checkpoint -> ``(backbone state dict in original DINOv2 names, PointViT
    extras {point_embed.weight, head.weight, head.bias})``."""
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    extras = {"point_embed.weight": sd.pop(REFERENCE_POINT_KEY)}
    for name in ("head.weight", "head.bias"):
        if name in sd:
            extras[name] = sd.pop(name)
    sd.setdefault("mask_token", torch.zeros(1, 1))  # routes timm's filter to its DINOv2 conversion
    return sd, extras


def fixed_pos_table(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A ``[1, 1 + S * S, D]`` position embedding (class entry first) -> the patch table
    ``[Gh * Gw, D]`` of a fixed grid, resized bicubically (EoMT's table; ``PointViT`` in its square
    frame uses the same)."""
    n_grid = pos_embed.shape[1] - 1
    side = int(round(n_grid ** 0.5))
    if side * side != n_grid:
        raise ValueError(f"pos_embed of {pos_embed.shape[1]} entries is not 1 + a square grid")
    table = pos_embed[0, 1:].reshape(side, side, -1).permute(2, 0, 1)[None].float()
    if (side, side) != tuple(grid):
        table = F.interpolate(table, size=tuple(grid), mode="bicubic", align_corners=False)
    return table[0].permute(1, 2, 0).reshape(-1, pos_embed.shape[-1]).to(pos_embed.dtype)


def timm_to_eomt(sd: dict[str, torch.Tensor], grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A timm DINOv2 state dict (``vit_*_patch14_dinov2``, no registers) -> the encoder of HF
    ``EomtForUniversalSegmentation``: q / k / v split from ``qkv``, the class token's position
    folded into ``cls_token`` (EoMT's table covers patches only) and the grid resized bicubically
    to ``grid`` (the EoMT input size / patch size)."""
    out: dict[str, torch.Tensor] = {}
    pos = sd["pos_embed"]
    out["embeddings.cls_token"] = sd["cls_token"] + pos[:, :1]
    out["embeddings.position_embeddings.weight"] = fixed_pos_table(pos, grid)
    out["embeddings.patch_embeddings.projection.weight"] = sd[PATCH_KEY]
    out["embeddings.patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"]
    out["layernorm.weight"], out["layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
    dim = pos.shape[-1]
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in blocks:
        src, dst = f"blocks.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{src}attn.qkv.{kind}"].split(dim, dim=0)
            out[f"{dst}attention.q_proj.{kind}"] = q
            out[f"{dst}attention.k_proj.{kind}"] = k
            out[f"{dst}attention.v_proj.{kind}"] = v
            out[f"{dst}attention.out_proj.{kind}"] = sd[f"{src}attn.proj.{kind}"]
            for norm in ("norm1", "norm2"):
                out[f"{dst}{norm}.{kind}"] = sd[f"{src}{norm}.{kind}"]
            for fc in ("fc1", "fc2"):
                out[f"{dst}mlp.{fc}.{kind}"] = sd[f"{src}mlp.{fc}.{kind}"]
        out[f"{dst}layer_scale1.lambda1"] = sd[f"{src}ls1.gamma"]
        out[f"{dst}layer_scale2.lambda1"] = sd[f"{src}ls2.gamma"]
    return out
