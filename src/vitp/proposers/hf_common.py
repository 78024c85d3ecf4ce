"""Shared machinery of the Hugging Face ``*ForUniversalSegmentation`` proposers.

* ``targets_to_hf``: our ``Target`` list -> HF ``mask_labels`` / ``class_labels`` (crowd segments
  excluded, as Mask2Former's dataset mappers do; task-specific ground truth as OneFormer builds it).
* ``global_num_masks``: the mask-loss normaliser summed over DDP processes (``torch.distributed``),
  which HF only does under ``accelerate``.
* ``HFUniversalProposer``: the common base of ``Mask2FormerProposer`` and ``OneFormerProposer``:
  building the HF model (hub id / local directory / random-init preset), the label-space mapping,
  freezing, ``save_pretrained`` and the Mask2Former-style set-prediction loss computed from the HF
  loss module's public pieces (its Hungarian ``matcher`` and ``loss_masks``) with our own
  ``num_masks`` and class cross-entropy (so it works in the mapped label space too).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vitp.proposers.base import MaskProposer, check_task
from vitp.proposers.label_space import LabelSpaceMapper, agnostic_logits, build_label_mapping
from vitp.structures import DecoderLayerOutput, Proposals, Target

log = logging.getLogger(__name__)

VITP_META_FILE = "vitp_proposer.json"
FREEZE_CHOICES = ("none", "backbone", "all")


# --------------------------------------------------------------------------------------- targets
def targets_to_hf(
    targets: Sequence[Target],
    task: str | Sequence[str] = "panoptic",
    is_thing: Sequence[bool] | None = None,
    class_agnostic: bool = False,
    keep_class: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Our targets -> HF ``(mask_labels float[N,H,W], class_labels long[N])`` per image.

    Masks stay in the input frame (the padded batch size; HF samples points in normalised
    coordinates, so the resolution need not match the mask logits). Crowd segments are excluded.
    ``task``: ``"panoptic"`` keeps every segment; ``"semantic"`` merges the segments of each class
    into one mask; ``"instance"`` keeps thing classes only (all classes if ``is_thing`` is None).
    ``keep_class``: optional ``bool[K]``; segments of classes marked False are excluded (dataset
    classes that a mapped pretrained proposer cannot predict). ``class_agnostic``: all labels 0.
    """
    tasks = [task] * len(targets) if isinstance(task, str) else list(task)
    if len(tasks) != len(targets):
        raise ValueError(f"{len(tasks)} tasks for {len(targets)} targets")
    thing = None if is_thing is None else torch.as_tensor(list(is_thing), dtype=torch.bool)
    mask_labels, class_labels = [], []
    for t, tk in zip(targets, tasks):
        check_task(tk)
        masks, labels = t.masks.bool(), t.labels.long()
        keep = ~t.is_crowd.bool().to(masks.device)
        if keep_class is not None and labels.numel():
            keep &= keep_class.to(labels.device)[labels]
        if tk == "instance" and thing is not None and labels.numel():
            keep &= thing.to(labels.device)[labels]
        masks, labels = masks[keep], labels[keep]
        if tk == "semantic" and labels.numel():
            uniq = torch.unique(labels)
            masks = torch.stack([masks[labels == c].any(0) for c in uniq])
            labels = uniq
        if class_agnostic:
            labels = torch.zeros_like(labels)
        mask_labels.append(masks.to(dtype))
        class_labels.append(labels)
    return mask_labels, class_labels


def global_num_masks(num_local: int | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Mask-loss normaliser: the number of target masks averaged over DDP processes, at least 1.

    Every process divides its summed per-mask losses by ``sum_over_ranks(num_masks) / world_size``;
    DDP then averages the gradients over ranks, so the effective loss is the sum of all per-mask
    losses divided by the total number of masks, as in the reference Mask2Former (which all-reduces
    via detectron2). Without an initialised process group this is ``max(num_local, 1)``.
    """
    n = torch.as_tensor(num_local, dtype=torch.float, device=device).reshape(())
    world = 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world > 1:
            n = n.clone()
            dist.all_reduce(n, op=dist.ReduceOp.SUM)
    return torch.clamp(n / world, min=1.0)


# --------------------------------------------------------------------------------------- text
class HashTokenizer:
    """Offline stand-in for OneFormer's CLIP tokenizer, for random-initialised models only.

    Words get stable ids ``crc32(word) % (vocab_size - 3) + 1``; ``bos = vocab_size - 2`` and
    ``eos = vocab_size - 1`` (the highest id, as in CLIP: OneFormer's text encoder pools the
    ``argmax`` token); padding is 0.
    """

    kind = "hash"

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 8:
            raise ValueError("HashTokenizer needs vocab_size >= 8")
        self.vocab_size = vocab_size

    def encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        out = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            words = re.findall(r"\w+|[^\w\s]", text.lower())
            ids = [zlib.crc32(w.encode()) % (self.vocab_size - 3) + 1 for w in words]
            ids = [self.vocab_size - 2, *ids[: max_length - 2], self.vocab_size - 1]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class HFTextTokenizer:
    """Wraps a HF tokenizer the way ``OneFormerProcessor`` uses it (ids * attention mask)."""

    kind = "hf"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        tok = self.tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True)
        ids = torch.as_tensor(tok["input_ids"], dtype=torch.long)
        return ids * torch.as_tensor(tok["attention_mask"], dtype=torch.long)


# --------------------------------------------------------------------------------------- configs
def merge_config_dict(base: dict, overrides: Mapping | None) -> dict:
    """``base`` updated with ``overrides``; a ``backbone_config`` dict is merged key by key unless
    the override names a different ``model_type`` (then it replaces the preset's backbone)."""
    out = copy.deepcopy(base)
    for k, v in (overrides or {}).items():
        if (
            k == "backbone_config"
            and isinstance(v, Mapping)
            and isinstance(out.get(k), dict)
            and v.get("model_type", out[k].get("model_type")) == out[k].get("model_type")
        ):
            out[k] = {**out[k], **dict(v)}
        else:
            out[k] = copy.deepcopy(v)
    return out


def swin_backbone(embed_dim: int, depths: list[int], num_heads: list[int], window_size: int = 7) -> dict:
    """A Swin backbone config dict with the 4 stages Mask2Former/OneFormer read."""
    return {
        "model_type": "swin",
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": num_heads,
        "window_size": window_size,
        "drop_path_rate": 0.0,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    }


def _build_backbone_config(d: dict):
    from transformers import AutoConfig

    d = dict(d)
    model_type = d.pop("model_type")
    return AutoConfig.for_model(model_type, **d)


# --------------------------------------------------------------------------------------- base
class HFUniversalProposer(MaskProposer):
    """Common base of the HF Mask2Former / OneFormer proposers (not registered itself).

    Subclasses define ``hf_model_class``, ``hf_config_class``, ``presets`` and ``_run`` (the HF
    forward), and may extend ``_extra_losses``.
    """

    hf_model_class: Any = None
    hf_config_class: Any = None
    presets: dict[str, dict] = {}
    proposer_name: str = ""

    def _setup(
        self,
        model: str | None,
        num_classes: int | None,
        preset: str | None,
        config_overrides: dict | None,
        class_agnostic: bool,
        label_map: dict | None,
        class_names: list[str] | None,
        match_by_name: bool,
        unmapped: str,
        reinit_head: bool,
        freeze: str,
        is_thing: list[bool] | None,
    ) -> None:
        if model is None and preset is None:
            raise ValueError(f"{type(self).__name__}: give `model` (hub id or directory) or `preset`")
        if model is not None and preset is not None:
            # LightningCLI merges `--...proposer.init_args.model DIR` into a config that names a
            # preset: loading the given weights is what such a command means.
            log.info("%s: both model=%r and preset=%r given; loading the model", type(self).__name__,
                      model, preset)
            preset = None
        if freeze not in FREEZE_CHOICES:
            raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {freeze!r}")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if num_classes is None:
                num_classes = len(class_names)
            elif num_classes != len(class_names):
                raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
        self.class_agnostic = bool(class_agnostic)
        self.is_thing = None if is_thing is None else [bool(x) for x in is_thing]
        self.freeze = freeze
        self.source = model
        self._loaded_pretrained = model is not None

        if preset is not None:
            if preset not in self.presets:
                raise ValueError(f"unknown preset {preset!r}; choose from {sorted(self.presets)}")
            if class_agnostic:
                labels = ["object"]
            elif num_classes is None:
                raise ValueError("a random-init preset needs num_classes (or class_names) unless class_agnostic")
            else:
                labels = class_names or [f"class_{i}" for i in range(num_classes)]
            cfg = merge_config_dict(self.presets[preset], config_overrides)
            if isinstance(cfg.get("backbone_config"), dict):
                cfg["backbone_config"] = _build_backbone_config(cfg["backbone_config"])
            cfg["id2label"] = dict(enumerate(labels))
            cfg["label2id"] = {n: i for i, n in enumerate(labels)}
            self.hf = self.hf_model_class(self.hf_config_class(**cfg))
        else:
            kwargs = dict(config_overrides or {})
            head_classes = None
            if reinit_head:
                if class_agnostic:
                    head_classes = ["object"]
                elif num_classes is None:
                    raise ValueError("reinit_head=True needs num_classes or class_names")
                else:
                    head_classes = class_names or [f"class_{i}" for i in range(num_classes)]
                kwargs.update(
                    num_labels=len(head_classes),
                    id2label=dict(enumerate(head_classes)),
                    label2id={n: i for i, n in enumerate(head_classes)},
                    ignore_mismatched_sizes=True,
                )
            self.hf = self.hf_model_class.from_pretrained(model, **kwargs)

        cfg = self.hf.config
        src_names = [str(cfg.id2label.get(i, cfg.id2label.get(str(i), f"class_{i}"))) for i in range(cfg.num_labels)]
        self.proposer_class_names = src_names
        # label space: proposer classes -> dataset classes
        self.mapper: LabelSpaceMapper | None = None
        if class_agnostic:
            self.num_classes = None
        else:
            if num_classes is None:
                num_classes = cfg.num_labels
            self.num_classes = num_classes
            identity_ok = num_classes == cfg.num_labels and label_map is None and (
                class_names is None or [c.lower() for c in class_names] == [s.lower() for s in src_names]
                or src_names == [f"class_{i}" for i in range(num_classes)]
                or all(re.fullmatch(r"LABEL_\d+", s) for s in src_names)
            )
            if not identity_ok:
                if class_names is None and label_map is None:
                    raise ValueError(
                        f"the proposer predicts {cfg.num_labels} classes but the dataset has {num_classes}; "
                        "give class_names (matched by name), a label_map, or reinit_head=True"
                    )
                mapping = build_label_mapping(
                    src_names, class_names, num_classes, _coerce_label_map(label_map), match_by_name
                )
                self.mapper = LabelSpaceMapper(mapping, num_classes, unmapped)  # type: ignore[arg-type]
                if self.mapper.is_identity:
                    self.mapper = None
                else:
                    n_map = sum(m >= 0 for m in mapping)
                    missing = (~self.mapper.has_source).sum().item()
                    log.info(
                        "%s: %d/%d proposer classes mapped onto %d dataset classes (%d without a proposer class)",
                        type(self).__name__, n_map, len(mapping), num_classes, missing,
                    )
        self.apply_freeze(freeze)

    # ----------------------------------------------------------------------------- properties
    @property
    def config(self):
        return self.hf.config

    @property
    def num_queries(self) -> int:
        return int(self.hf.config.num_queries)

    def backbone_module(self) -> torch.nn.Module:
        return self.hf.model.pixel_level_module.encoder

    # ----------------------------------------------------------------------------- freezing
    def apply_freeze(self, freeze: str) -> None:
        """``"none"``: all trainable; ``"backbone"``: the image backbone frozen (kept in eval mode, so
        batch-norm statistics stay fixed); ``"all"``: nothing trainable, forward under ``no_grad``."""
        if freeze not in FREEZE_CHOICES:
            raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {freeze!r}")
        self.freeze = freeze
        for p in self.parameters():
            p.requires_grad_(True)
        if freeze == "backbone":
            for p in self.backbone_module().parameters():
                p.requires_grad_(False)
        elif freeze == "all":
            for p in self.parameters():
                p.requires_grad_(False)
        for p in self._unused_parameters():
            p.requires_grad_(False)
        self.train(self.training)

    def _unused_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters no loss reaches (kept frozen so DDP needs no ``find_unused_parameters``)."""
        return []

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze == "backbone":
            self.backbone_module().eval()
        elif self.freeze == "all":
            self.hf.eval()
        return self

    # ----------------------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Save the HF model (and tokenizer, if any) so that ``model=directory`` rebuilds it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(directory)
        meta = {"proposer": self.proposer_name, **self._extra_meta(directory)}
        (directory / VITP_META_FILE).write_text(json.dumps(meta, indent=2))

    def _extra_meta(self, directory: Path) -> dict:
        return {}

    @staticmethod
    def read_meta(model: str | None) -> dict:
        if model is None or not os.path.isdir(model):
            return {}
        f = Path(model) / VITP_META_FILE
        return json.loads(f.read_text()) if f.is_file() else {}

    # ----------------------------------------------------------------------------- outputs
    def _output_logits(self, raw: torch.Tensor) -> torch.Tensor:
        """Proposer-space logits ``[..., K_p+1]`` -> the space the loss and callers see."""
        if self.class_agnostic:
            return raw if raw.shape[-1] == 2 else agnostic_logits(raw)
        if self.mapper is not None:
            return self.mapper(raw)
        return raw

    def _make_proposals(
        self, masks: torch.Tensor, raw_class: torch.Tensor, layers: list[DecoderLayerOutput],
        tasks: list[str], query_embeddings: torch.Tensor | None = None,
    ) -> Proposals:
        out_logits = self._output_logits(raw_class)
        return Proposals(
            mask_logits=masks,
            class_logits=None if self.class_agnostic else out_logits,
            objectness=1.0 - out_logits.softmax(-1)[..., -1] if self.class_agnostic else None,
            tasks=tuple(tasks),
            raw_class_logits=raw_class,
            layers=layers,
            query_embeddings=query_embeddings,
        )

    # ----------------------------------------------------------------------------- loss
    def _num_output_classes(self) -> int:
        return 1 if self.class_agnostic else int(self.num_classes)  # type: ignore[arg-type]

    def _keep_class(self) -> torch.Tensor | None:
        if self.mapper is None or self.class_agnostic:
            return None
        return self.mapper.has_source

    def _class_loss(self, logits: torch.Tensor, class_labels: list[torch.Tensor], indices) -> torch.Tensor:
        """Cross-entropy of matched queries to their class, others to no-object (weighted by
        ``config.no_object_weight``), as HF's ``loss_labels`` but in the output label space."""
        logits = logits.float()
        b, q, k1 = logits.shape
        weight = torch.ones(k1, device=logits.device, dtype=logits.dtype)
        weight[-1] = float(self.hf.config.no_object_weight)
        target = torch.full((b, q), k1 - 1, dtype=torch.long, device=logits.device)
        for i, ((src, tgt), labels) in enumerate(zip(indices, class_labels)):
            if len(src):
                target[i, src.to(logits.device)] = labels.to(logits.device)[tgt.to(logits.device)]
        return F.cross_entropy(logits.transpose(1, 2), target, weight=weight)

    def _layer_losses(self, masks, raw_class, mask_labels, class_labels, num_masks) -> dict[str, torch.Tensor]:
        crit = self.hf.criterion
        logits = self._output_logits(raw_class)
        indices = crit.matcher(masks, logits, mask_labels, class_labels)
        out = dict(crit.loss_masks(masks, mask_labels, indices, num_masks))
        out["loss_cross_entropy"] = self._class_loss(logits, class_labels, indices)
        return out

    def _extra_losses(self, proposals: Proposals, targets, tasks, mask_labels, class_labels) -> dict:
        return {}

    def loss(self, proposals: Proposals, targets: list[Target]) -> dict[str, torch.Tensor]:
        """Mask2Former set-prediction loss on the final and (``config.use_auxiliary_loss``)
        intermediate decoder outputs. Returns *weighted* terms ``loss_cross_entropy``,
        ``loss_mask``, ``loss_dice`` (final layer), ``loss_aux`` (all intermediate layers),
        possibly ``loss_contrastive`` (OneFormer), and their sum ``loss``; ``num_masks`` is the
        DDP-averaged normaliser (see ``global_num_masks``)."""
        tasks = list(proposals.tasks) or ["panoptic"] * len(targets)
        masks = proposals.mask_logits
        mask_labels, class_labels = targets_to_hf(
            targets, tasks, self.is_thing, self.class_agnostic, self._keep_class(), dtype=masks.dtype
        )
        mask_labels = [m.to(masks.device) for m in mask_labels]
        class_labels = [c.to(masks.device) for c in class_labels]
        num_masks = global_num_masks(sum(len(c) for c in class_labels), masks.device)
        cfg = self.hf.config
        w = {"loss_cross_entropy": cfg.class_weight, "loss_mask": cfg.mask_weight, "loss_dice": cfg.dice_weight}

        final = self._layer_losses(masks, proposals.raw_class_logits, mask_labels, class_labels, num_masks)
        out = {k: final[k] * w[k] for k in w}
        aux_total = masks.new_zeros(())
        if cfg.use_auxiliary_loss:
            for layer in proposals.layers:
                lo = self._layer_losses(layer.mask_logits, layer.class_logits, mask_labels, class_labels, num_masks)
                aux_total = aux_total + sum(lo[k] * w[k] for k in w)
        out["loss_aux"] = aux_total
        out.update(self._extra_losses(proposals, targets, tasks, mask_labels, class_labels))
        out["loss"] = sum(out.values())
        out["num_masks"] = num_masks.detach()
        return out

    # ----------------------------------------------------------------------------- forward
    def _run(
        self, images: torch.Tensor, tasks: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, list[DecoderLayerOutput], torch.Tensor | None]:
        """The HF model: ``(mask logits, raw class logits, intermediate layers, query embeddings)``."""
        raise NotImplementedError

    def _tasks_for(self, images: torch.Tensor, task: str, targets) -> list[str]:
        return [check_task(task)] * images.shape[0]

    def forward(
        self, images: torch.Tensor, task: str = "panoptic", targets: list[Target] | None = None
    ) -> Proposals:
        """``images float[B,3,H,W]`` (normalised, top-left padded) -> ``Proposals`` with
        ``mask_logits [B,Q,H/4,W/4]`` over the padded frame and ``class_logits [B,Q,K+1]`` in the
        dataset's label space (None when class-agnostic; then ``objectness`` is set)."""
        tasks = self._tasks_for(images, task, targets)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.freeze != "all"):
            masks, raw_class, layers, queries = self._run(images, tasks)
        return self._make_proposals(masks, raw_class, layers, tasks, queries)


def _coerce_label_map(label_map: Mapping | None) -> dict | None:
    """YAML gives int keys for ``{3: 5}`` and str keys for ``{"3": 5}``; both are accepted."""
    if label_map is None:
        return None
    return {k: v for k, v in label_map.items()}
