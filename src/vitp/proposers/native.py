"""``NativeProposer``: the SeNaTra-style grouping backbone as a vitp mask proposer.

The backbone (``vitp.backbones.NativeBackbone``) groups the stride-4 tokens three times; the chain
of its soft assignments gives, for every stride-4 token, a distribution over the final groups.
Each final group is one proposal (Q = number of stride-32 cells of the 32-padded image, e.g. 64 for
256x256; Q varies with the image size):

* mask: the group's column of the chain, as logits (``log p - log(1 - p)``), so
  ``sigmoid(mask_logits)`` is the soft mask and the masks of a pixel sum to 1;
* class: an MLP on the final group token, ``K + 1`` logits (last = no object; ``1 - p(no object)``
  is the proposal's objectness);
* semantic head: another MLP on the group token giving K class logits per group; carried to the
  pixels through the chain (``sum_q p_q(pixel) softmax(sem_q)``) and trained with a pixel
  cross-entropy. With ``semantic_from_head`` the proposer is task-conditioned and ``task=semantic``
  returns these logits as ``class_logits`` (no-object column at -1e4): the semantic map the
  post-processing computes is then exactly the chain-carried one.

Training (``loss``): Mask2Former's set-prediction loss (HF's Hungarian matcher and ``loss_masks``
on sampled points, our class cross-entropy, ``num_masks`` summed over DDP processes by
``global_num_masks``) plus ``semantic_weight`` x the pixel cross-entropy; the weights and points are
``NativeLossSettings`` (``loss:``), the backbone's shape ``NativeArchitecture`` (``architecture:``).

``save_pretrained(dir)`` writes ``native_proposer.json`` + ``native_proposer.pt``; ``model: dir``
rebuilds it (the architecture comes from the directory, like HF's ``from_pretrained``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from vitp.backbones.native import NATIVE_PRESETS, NativeBackbone
from vitp.proposers.base import MaskProposer
from vitp.proposers.hf_loss import LOSS_TERMS, layer_losses
from vitp.proposers.hf_targets import global_num_masks, targets_to_hf
from vitp.structures import Proposals, Target, check_task

META_FILE = "native_proposer.json"
WEIGHTS_FILE = "native_proposer.pt"
_EPS = 1e-6


def probs_to_logits(p: torch.Tensor) -> torch.Tensor:
    """``logit(p)`` with ``p`` clamped to ``[1e-6, 1 - 1e-6]`` (sigmoid inverts it there)."""
    p = p.clamp(_EPS, 1 - _EPS)
    return torch.log(p) - torch.log1p(-p)


def frame_masks(m: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Masks ``[B, Q, Hp/4, Wp/4]`` of the 32-padded image -> ``[B, Q, ceil(H/4), ceil(W/4)]``
    covering exactly the input frame ``(H, W)`` (a crop when ``H``, ``W`` are multiples of 4,
    otherwise bilinear resampling of the region ``[0, H/4) x [0, W/4)``)."""
    (hi, wi), (hm, wm) = image_size, m.shape[-2:]
    h, w = -(-hi // 4), -(-wi // 4)
    if hi % 4 == 0 and wi % 4 == 0:
        return m[..., :h, :w]
    ys = (torch.arange(h, device=m.device) + 0.5) * (hi / 4 / h) / hm * 2 - 1
    xs = (torch.arange(w, device=m.device) + 0.5) * (wi / 4 / w) / wm * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None].expand(m.shape[0], -1, -1, -1)
    return F.grid_sample(m, grid.to(m.dtype), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class NativeArchitecture:
    """The grouping backbone's shape, as ``NativeProposer(architecture=...)`` builds it; a field left
    None takes the preset's value.

    Args:
        depths: transformer blocks per stage (4 values).
        dims: channels per stage (4 values, doubling in the presets).
        heads: attention heads per stage (4 values).
        window: local attention window (tokens per side).
        tau: grouping logit scale (None: ``dim ** -0.5``).
        grouping_iters: iterations L of every grouping layer.
        grouping: False = strided-conv downsampling with hard parent-cell assignments (ablation;
            the masks are then 32x32 squares).
        query_init: ``conv`` (strided conv of the input) or ``learned`` output-token init (ablation).
        pos_bias: relative position bias in the grouping logits (ablation switch).
    """

    depths: list[int] | None = None
    dims: list[int] | None = None
    heads: list[int] | None = None
    window: int | None = None
    tau: float | None = None
    grouping_iters: int = 3
    grouping: bool = True
    query_init: Literal["conv", "learned"] = "conv"
    pos_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("depths", "dims", "heads"):
            value = getattr(self, name)
            if value is not None and len(value) != 4:
                raise ValueError(f"{name} needs 4 values (one per stage), got {list(value)}")

    def resolve(self, preset: str | None) -> dict[str, Any]:
        """``NativeBackbone``'s arguments: these fields, the None ones from ``preset`` (None: ``small``)."""
        if preset is not None and preset not in NATIVE_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(NATIVE_PRESETS)}")
        base = NATIVE_PRESETS[preset if preset is not None else "small"]
        arch = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: base[k] if v is None and k in base else v for k, v in arch.items()}


@dataclass(frozen=True)
class NativeLossSettings:
    """``NativeProposer.loss``: Mask2Former's set-prediction loss plus the chain-carried semantic loss.

    Args:
        semantic_weight: weight of the chain-carried pixel cross-entropy.
        class_weight: weight of the class cross-entropy (also its matching cost).
        mask_weight: weight of the mask sigmoid cross-entropy (also its matching cost).
        dice_weight: weight of the dice loss (also its matching cost).
        no_object_weight: class weight of "no object" in the class cross-entropy.
        train_num_points: points sampled per mask by the matcher and the mask losses.
    """

    semantic_weight: float = 1.0
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 4096


class NativeProposer(MaskProposer):
    """SeNaTra-style native segmentation backbone + group heads as a trainable mask proposer.

    Q (the number of proposals) is not a parameter: it is ``ceil(H/32) * ceil(W/32)``, the number
    of stride-4 tokens / 4^3 (64 for 256x256 inputs).

    Args:
        model: a directory written by ``save_pretrained`` (takes precedence over ``preset`` and
            ``architecture``).
        num_classes: number of dataset classes K (linked by the CLI).
        preset: ``tiny`` (tests) or ``small`` (2-core CPU runs); ``architecture`` overrides it.
        architecture: the backbone's shape (:class:`NativeArchitecture`; None fields: the preset's).
        semantic_from_head: ``task=semantic`` uses the native semantic head (task-conditioned: one
            forward per task at evaluation); otherwise one forward serves all tasks.
        loss: the training loss's weights and points (:class:`NativeLossSettings`).
        class_names: dataset class names (linked by the CLI; stored with the weights).
        is_thing: per dataset class (linked by the CLI; ``instance`` targets keep things only).
    """

    def __init__(
        self,
        model: str | None = None,
        num_classes: int | None = None,
        preset: Literal["tiny", "small"] | None = "small",
        architecture: NativeArchitecture = NativeArchitecture(),
        semantic_from_head: bool = False,
        loss: NativeLossSettings = NativeLossSettings(),
        class_names: list[str] | None = None,
        is_thing: list[bool] | None = None,
    ) -> None:
        super().__init__()
        if model is not None:
            meta = json.loads((Path(model) / META_FILE).read_text())
            arch, saved_k = meta["arch"], meta["num_classes"]
            if num_classes is not None and num_classes != saved_k:
                raise ValueError(f"{model} was trained for {saved_k} classes, the dataset has {num_classes}")
            num_classes = saved_k
            class_names = meta.get("class_names") if class_names is None else class_names
            is_thing = meta.get("is_thing") if is_thing is None else is_thing
        else:
            arch = architecture.resolve(preset)
        if class_names is not None and num_classes is None:
            num_classes = len(class_names)
        if num_classes is None:
            raise ValueError("NativeProposer needs num_classes (linked from the data module by `vitp`)")
        self.arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items()}
        self.num_classes = int(num_classes)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.is_thing = None if is_thing is None else [bool(x) for x in is_thing]
        self.task_conditioned = bool(semantic_from_head)
        self.semantic_weight = float(loss.semantic_weight)
        self.loss_config = SimpleNamespace(
            num_labels=self.num_classes, class_weight=loss.class_weight, mask_weight=loss.mask_weight,
            dice_weight=loss.dice_weight, no_object_weight=loss.no_object_weight,
            train_num_points=loss.train_num_points, oversample_ratio=3.0, importance_sample_ratio=0.75,
        )
        self.backbone = NativeBackbone(**self.arch)
        d = self.backbone.dims[-1]
        self.head_norm = nn.LayerNorm(d)
        self.class_head = Mlp(d, d, self.num_classes + 1)
        self.semantic_head = Mlp(d, d, self.num_classes)
        if model is not None:
            state = torch.load(Path(model) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            self.load_state_dict(state)
        self._criterion = None

    # ------------------------------------------------------------------ forward
    @property
    def criterion(self):
        """HF's ``Mask2FormerLoss`` (matcher + ``loss_masks``), built on first use, not a submodule."""
        if self._criterion is None:
            from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

            self.__dict__["_criterion"] = Mask2FormerLoss(self.loss_config, weight_dict={})
        return self._criterion

    def forward(
        self, images: torch.Tensor, task: str = "panoptic", targets: list[Target] | None = None
    ) -> Proposals:
        """``images float[B,3,H,W]`` -> ``Proposals``: ``mask_logits [B, Q, ceil(H/4), ceil(W/4)]``
        over the input frame, ``class_logits [B, Q, K+1]``, ``query_embeddings`` = group tokens."""
        check_task(task)
        out = self.backbone(images)
        masks = frame_masks(probs_to_logits(out.soft_masks()), out.image_size)
        tokens = self.head_norm(out.tokens)
        logits = self.class_head(tokens)
        class_logits = logits
        if task == "semantic" and self.task_conditioned:
            sem = self.semantic_head(tokens)
            class_logits = torch.cat([sem, sem.new_full((*sem.shape[:2], 1), -1e4)], -1)
        return Proposals(
            mask_logits=masks, class_logits=class_logits, tasks=(task,) * images.shape[0],
            raw_class_logits=logits, query_embeddings=tokens,
        )

    # ------------------------------------------------------------------ loss
    def semantic_loss(self, proposals: Proposals, targets: list[Target]) -> torch.Tensor:
        """Pixel cross-entropy of the semantic head's class probabilities carried through the
        chain, at mask resolution; pixels of no segment or of crowd segments are ignored."""
        probs = self.semantic_head(proposals.query_embeddings).softmax(-1)  # [B, Q, K]
        pixel = torch.einsum("bqk,bqhw->bkhw", probs, proposals.mask_logits.sigmoid())
        h, w = pixel.shape[-2:]
        labels = []
        for t in targets:
            lab = torch.full(t.masks.shape[-2:], -1.0, device=pixel.device)
            for m, c, crowd in zip(t.masks.bool(), t.labels, t.is_crowd.bool()):
                lab[m.to(pixel.device)] = -1.0 if crowd else float(c)
            labels.append(lab)
        labels = F.interpolate(torch.stack(labels)[:, None], size=(h, w), mode="nearest")[:, 0].long()
        return F.nll_loss(torch.log(pixel.clamp_min(_EPS)), labels, ignore_index=-1)

    def loss(self, proposals: Proposals, targets: list[Target]) -> dict[str, torch.Tensor]:
        """Weighted ``loss_cross_entropy``, ``loss_mask``, ``loss_dice`` (Mask2Former set loss on
        the panoptic queries), ``loss_semantic`` and their sum ``loss``; ``num_masks`` as logged."""
        masks = proposals.mask_logits
        tasks = ["panoptic" if tk == "semantic" and self.task_conditioned else tk for tk in proposals.tasks]
        mask_labels, class_labels = targets_to_hf(targets, tasks or "panoptic", self.is_thing, dtype=masks.dtype)
        mask_labels = [m.to(masks.device) for m in mask_labels]
        class_labels = [c.to(masks.device) for c in class_labels]
        num_masks = global_num_masks(sum(len(c) for c in class_labels), masks.device)
        cfg = self.loss_config
        terms = layer_losses(self.criterion, masks, proposals.raw_class_logits, mask_labels, class_labels,
                             num_masks, cfg.no_object_weight)
        weights = dict(zip(LOSS_TERMS, (cfg.class_weight, cfg.mask_weight, cfg.dice_weight)))
        out = {k: terms[k] * w for k, w in weights.items()}
        out["loss_semantic"] = self.semantic_weight * self.semantic_loss(proposals, targets)
        out["loss"] = sum(out.values())
        out["num_masks"] = num_masks.detach()
        return out

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the architecture, label space and weights so that ``model=directory`` rebuilds it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"proposer": "native", "arch": self.arch, "num_classes": self.num_classes,
                "class_names": self.class_names, "is_thing": self.is_thing}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        torch.save(self.state_dict(), directory / WEIGHTS_FILE)
