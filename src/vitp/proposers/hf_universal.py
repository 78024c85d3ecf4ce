"""``HFUniversalProposer``: the common base of the HF Mask2Former and OneFormer proposers.

It owns what the two share: building the HF model (``vitp.proposers.hf_build``), mapping a
pretrained label space onto the dataset's (``vitp.proposers.label_space``), freezing,
``save_pretrained``, the set-prediction loss (``vitp.proposers.hf_loss`` on targets from
``vitp.proposers.hf_targets``) and ``forward``. A subclass names its HF classes and presets and
implements ``_run`` (the HF forward).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import torch

from vitp.checkpoint_heads import proposer_head_message
from vitp.proposers.base import MaskProposer
from vitp.proposers.hf_build import from_preset, from_pretrained, save_meta
from vitp.proposers.hf_loss import set_prediction_loss
from vitp.proposers.hf_targets import global_num_masks, targets_to_hf
from vitp.proposers.label_space import LabelSpaceMapper, NoClassMaps, agnostic_logits, build_label_mapping
from vitp.structures import DecoderLayerOutput, HeadMismatch, Proposals, Target, check_task

log = logging.getLogger(__name__)

FREEZE_CHOICES = ("none", "backbone", "all")


class HFUniversalProposer(MaskProposer):
    """A HF ``*ForUniversalSegmentation`` model as a mask proposer, from a hub id, a local
    directory or a random-init preset.

    Subclasses set ``hf_model_class``, ``hf_config_class``, ``presets`` and ``proposer_name`` and
    implement ``_run``; they may extend ``_extra_losses``, ``_extra_meta``, ``_tasks_for`` and
    ``_unused_parameters``.

    Args:
        model: hub id (``facebook/mask2former-swin-large-coco-panoptic``) or a directory written by
            ``save_pretrained``; takes precedence over ``preset``.
        num_classes: number of dataset classes K (defaults to the proposer's own).
        preset: random-init architecture (``tiny``/``small`` for CPU, ``swin-tiny`` full size;
            Mask2Former also ``native-tiny``/``native-small``: vitp's grouping backbone).
        config_overrides: HF config fields (``backbone_config`` given as a dict is merged into the
            preset's); for ``model`` they are passed to ``from_pretrained``.
        class_agnostic: one "object" class; ``class_logits`` is then None and ``objectness``
            holds ``1 - p(no object)`` per query.
        label_map: explicit proposer -> dataset class map (names or indices; null drops a class).
        class_names: the dataset's class names (matched by name to the proposer's ``id2label``).
        match_by_name: match class names automatically (``label_map`` entries take precedence).
        unmapped: proposer classes without a dataset class are dropped before the softmax
            (``drop``) or folded into the no-object column (``void``).
        freeze: ``none``, ``backbone`` or ``all``.
        is_thing: per dataset class, used to build ``instance``-task targets (things only).
    """

    hf_model_class: Any = None
    hf_config_class: Any = None
    presets: dict[str, dict] = {}
    proposer_name: str = ""

    def __init__(
        self,
        model: str | None = None,
        num_classes: int | None = None,
        preset: Literal["tiny", "small", "swin-tiny", "native-tiny", "native-small"] | None = None,
        config_overrides: dict | None = None,
        class_agnostic: bool = False,
        label_map: dict[str, str | None] | dict[int, int | None] | None = None,
        class_names: list[str] | None = None,
        match_by_name: bool = True,
        unmapped: Literal["drop", "void"] = "drop",
        freeze: Literal["none", "backbone", "all"] = "none",
        is_thing: list[bool] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if model is None and preset is None:
            raise ValueError(f"{name}: give `model` (hub id or directory) or `preset`")
        if model is not None and preset is not None:
            # LightningCLI merges `--...proposer.init_args.model DIR` into a config that names a
            # preset: loading the given weights is what such a command means.
            log.info("%s: both model=%r and preset=%r given; loading the model", name, model, preset)
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
        self._config_overrides = config_overrides
        self.class_names = class_names

        if preset is not None:
            labels = self._head_labels(num_classes, class_names, "a random-init preset")
            self.hf = from_preset(self.hf_model_class, self.hf_config_class, self.presets, preset,
                                  config_overrides, labels)
        else:
            self.hf = from_pretrained(self.hf_model_class, model, config_overrides)  # type: ignore[arg-type]
        self.mapper: LabelSpaceMapper | None = None
        self.num_classes = None
        if not class_agnostic:
            self.num_classes = self.hf.config.num_labels if num_classes is None else num_classes
            self.mapper = self._label_space_mapper(class_names, label_map, match_by_name, unmapped)
        self.apply_freeze(freeze)

    @property
    def proposer_class_names(self) -> list[str]:
        """The class names of the HF model's head (its ``id2label``)."""
        cfg = self.hf.config
        return [str(cfg.id2label.get(i, cfg.id2label.get(str(i), f"class_{i}"))) for i in range(cfg.num_labels)]

    def reinit_class_head(self) -> None:
        """Reload the pretrained model with a fresh class head for the dataset's classes (the module
        calls it for a ``head_mismatch`` under ``reinit_heads_on_mismatch``)."""
        labels = self._head_labels(self.num_classes, self.class_names, "a fresh class head")
        self.hf = from_pretrained(self.hf_model_class, self.source, self._config_overrides, labels)  # type: ignore[arg-type]
        self._after_load()
        self.mapper, self.head_mismatch = None, None
        self.apply_freeze(self.freeze)

    def _after_load(self) -> None:
        """Subclass adjustments of a freshly loaded HF model (e.g. EoMT's mask annealing state)."""

    def _head_labels(self, num_classes: int | None, class_names: list[str] | None, what: str) -> list[str]:
        """Class names of a fresh class head."""
        if self.class_agnostic:
            return ["object"]
        if num_classes is None:
            raise ValueError(f"{what} needs num_classes (or class_names) unless class_agnostic")
        return class_names or [f"class_{i}" for i in range(num_classes)]

    def _label_space_mapper(
        self, class_names: list[str] | None, label_map: dict | None, match_by_name: bool, unmapped: str
    ) -> LabelSpaceMapper | None:
        """The proposer -> dataset class mapping, None when it is the identity."""
        src, k = self.proposer_class_names, int(self.num_classes)  # type: ignore[arg-type]
        identity = k == len(src) and label_map is None and (
            class_names is None or [c.lower() for c in class_names] == [s.lower() for s in src]
            or src == [f"class_{i}" for i in range(k)]
            or all(re.fullmatch(r"LABEL_\d+", s) for s in src)
        )
        if identity:
            return None
        if class_names is None and label_map is None:
            self.head_mismatch = HeadMismatch(type(self).__name__, str(self.source),
                                              f"it predicts {len(src)} classes, the dataset has {k}")
            return None
        label_map = None if label_map is None else dict(label_map.items())
        try:
            mapping = build_label_mapping(src, class_names, k, label_map, match_by_name)
        except NoClassMaps as e:
            self.head_mismatch = HeadMismatch(type(self).__name__, str(self.source), str(e))
            return None
        mapper = LabelSpaceMapper(mapping, k, unmapped)  # type: ignore[arg-type]
        if mapper.is_identity:
            return None
        log.info(
            "%s: %d/%d proposer classes mapped onto %d dataset classes (%d without a proposer class)",
            type(self).__name__, sum(m >= 0 for m in mapping), len(mapping), k,
            (~mapper.has_source).sum().item(),
        )
        return mapper

    # ----------------------------------------------------------------------------- properties
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
        save_meta(directory, {"proposer": self.proposer_name, **self._extra_meta(directory)})

    def _extra_meta(self, directory: Path) -> dict:
        return {}

    # ----------------------------------------------------------------------------- outputs
    def _output_logits(self, raw: torch.Tensor) -> torch.Tensor:
        """Proposer-space logits ``[..., K_p+1]`` -> the space the loss and callers see."""
        if self.class_agnostic:
            return raw if raw.shape[-1] == 2 else agnostic_logits(raw)
        if self.mapper is not None:
            return self.mapper(raw)
        return raw

    # ----------------------------------------------------------------------------- loss
    def loss(self, proposals: Proposals, targets: list[Target]) -> dict[str, torch.Tensor]:
        """Mask2Former set-prediction loss on the final and (``config.use_auxiliary_loss``)
        intermediate decoder outputs. Returns *weighted* terms ``loss_cross_entropy``,
        ``loss_mask``, ``loss_dice`` (final layer), ``loss_aux`` (all intermediate layers),
        possibly ``loss_contrastive`` (OneFormer), and their sum ``loss``; ``num_masks`` is the
        DDP-averaged normaliser (see ``global_num_masks``)."""
        tasks = list(proposals.tasks) or ["panoptic"] * len(targets)
        masks = proposals.mask_logits
        keep_class = None if self.mapper is None or self.class_agnostic else self.mapper.has_source
        mask_labels, class_labels = targets_to_hf(
            targets, tasks, self.is_thing, self.class_agnostic, keep_class, dtype=masks.dtype
        )
        mask_labels = [m.to(masks.device) for m in mask_labels]
        class_labels = [c.to(masks.device) for c in class_labels]
        num_masks = global_num_masks(sum(len(c) for c in class_labels), masks.device)
        cfg = self.hf.config
        layers = proposals.layers if getattr(cfg, "use_auxiliary_loss", True) else []
        out = set_prediction_loss(
            self.hf.criterion, cfg, (masks, self._output_logits(proposals.raw_class_logits)),
            [(layer.mask_logits, self._output_logits(layer.class_logits)) for layer in layers],
            mask_labels, class_labels, num_masks,
        )
        out.update(self._extra_losses(proposals, tasks, class_labels))
        out["loss"] = sum(out.values())
        out["num_masks"] = num_masks.detach()
        return out

    def _extra_losses(self, proposals: Proposals, tasks: list[str], class_labels: list[torch.Tensor]) -> dict:
        """Subclass-specific weighted loss terms (name -> scalar), added to the total."""
        return {}

    # ----------------------------------------------------------------------------- forward
    def _run(
        self, images: torch.Tensor, tasks: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, list[DecoderLayerOutput], torch.Tensor | None]:
        """The HF model: ``(mask logits, raw class logits, intermediate layers, query embeddings)``."""
        raise NotImplementedError

    def _tasks_for(self, images: torch.Tensor, task: str) -> list[str]:
        return [check_task(task)] * images.shape[0]

    def forward(
        self, images: torch.Tensor, task: str = "panoptic", targets: list[Target] | None = None
    ) -> Proposals:
        """``images float[B,3,H,W]`` (normalised, top-left padded) -> ``Proposals`` with
        ``mask_logits [B,Q,H/4,W/4]`` over the padded frame and ``class_logits [B,Q,K+1]`` in the
        dataset's label space (None when class-agnostic; then ``objectness`` is set)."""
        if self.head_mismatch is not None:
            raise ValueError(proposer_head_message(self.head_mismatch))
        tasks = self._tasks_for(images, task)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.freeze != "all"):
            masks, raw_class, layers, queries = self._run(images, tasks)
        logits = self._output_logits(raw_class)
        return Proposals(
            mask_logits=masks,
            class_logits=None if self.class_agnostic else logits,
            objectness=1.0 - logits.softmax(-1)[..., -1] if self.class_agnostic else None,
            tasks=tuple(tasks),
            raw_class_logits=raw_class,
            layers=layers,
            query_embeddings=queries,
        )
