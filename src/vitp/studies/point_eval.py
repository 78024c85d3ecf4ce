"""The evaluation behind ``vitp study point-assignment``: a configured model loaded from a
checkpoint, and per rule the metrics of the pipeline's own post-processing on shared proposals."""

from __future__ import annotations

import time
from dataclasses import replace
from collections.abc import Sequence
from typing import Any

import torch

from vitp.point_rules import POINT_RULES, check_point_rule, select_points_by_rule
from vitp.proposal_geometry import match_segments, original_size_logits
from vitp.structures import Batch, Proposals

SIZES = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, float("inf")))
"""COCO's object-size ranges (area in pixels of the original image)."""


def parse_rule(name: str) -> tuple[str, int]:
    """``argmax`` / ``interior`` / ``centroid`` / ``random`` / ``topK`` (argmax, K points averaged) /
    ``RULE@K`` -> ``(rule, K)``."""
    rule, _, k = name.partition("@")
    if rule.startswith("top") and rule[3:].isdigit():
        rule, k = "argmax", rule[3:]
    top_k = int(k) if k else 1
    check_point_rule(rule, top_k)
    return rule, top_k


def build_model(config: str, ckpt: str, extra: Sequence[str]) -> tuple[Any, Any]:
    """The config's ``ViTPModule`` with the checkpoint's weights (eval mode) and its data module, set
    up for validation (without training points)."""
    from vitp.checkpoint_heads import read_checkpoint
    from vitp.cli import cli

    from vitp.studies.runner import own_argv

    args = ["--config", str(config), *extra, "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--trainer.enable_progress_bar", "false"]
    with own_argv():
        run = cli(args, run=False)
    model, datamodule = run.model, run.datamodule
    state = read_checkpoint(ckpt)
    model.on_load_checkpoint(state)
    model.load_state_dict(state["state_dict"])
    model.eval()
    datamodule.val_points = False
    datamodule.setup("validate")
    return model, datamodule


def match_proposals(batch: Batch, proposals: Proposals) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: the ground-truth segment each proposal matches (IoU >= 0.5, non-crowd; -1 none) and
    that segment's area, both ``[Q]``, on the original image."""
    out = []
    for i, target in enumerate(batch.targets):
        pred = (original_size_logits(proposals, batch, i) > 0).flatten(1)
        seg = target.segments.flatten()
        n = len(target.labels)
        q = pred.shape[0]
        if n == 0 or q == 0:
            out.append((torch.full((q,), -1), torch.zeros(q)))
            continue
        gt = torch.zeros((n, seg.numel()), dtype=torch.bool)
        valid = seg >= 0
        gt[seg[valid].cpu(), valid.nonzero()[:, 0].cpu()] = True
        iou, best = match_segments(pred.cpu(), gt)
        ok = (iou >= 0.5) & ~target.is_crowd.cpu().bool()[best]
        out.append((torch.where(ok, best, -1), gt.sum(1).float()[best]))
    return out


class RuleEval:
    """Metrics of one rule (or, named ``reference``, of the proposer / oracle variants).

    name: a rule spec (:func:`parse_rule`) or ``reference``.
    model: the loaded ``ViTPModule``.
    seed: seed of the ``random`` rule.
    """

    def __init__(self, name: str, model: Any, seed: int) -> None:
        from vitp.metrics import SegmentationMetrics

        self.name, self.model, self.seed = name, model, seed
        self.rule, self.top_k = parse_rule(name) if name != "reference" else ("argmax", 1)
        variants = (["proposer"] if not model.proposer.class_agnostic else []) + ["oracle"]
        self.metrics = {v: SegmentationMetrics(model.dataset_info) for v in (variants if name == "reference" else [name])}
        self.hits = {v: {s: [0, 0] for s, _, _ in SIZES} for v in self.metrics}
        self.select_seconds = self.classify_seconds = self.propose_seconds = 0.0
        self.images = 0

    def _count(self, variant: str, matches: Sequence[tuple[torch.Tensor, torch.Tensor]], batch: Batch,
               probs: torch.Tensor) -> None:
        num_classes = self.model.dataset_info.num_classes
        for i, (best, area) in enumerate(matches):
            pred = probs[i, :, :num_classes].argmax(-1).cpu()
            right = pred == batch.targets[i].labels.cpu()[best.clamp(min=0)]
            for size, low, high in SIZES:
                sel = (best >= 0) & (area >= low) & (area < high)
                self.hits[variant][size][0] += int((right & sel).sum())
                self.hits[variant][size][1] += int(sel.sum())

    def update(self, batch: Batch, proposals: Sequence[Proposals],
               matches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """A rule: choose points, classify, post-process, count."""
        pipe = self.model.pipeline
        pipe.settings = replace(pipe.settings, point_rule=self.rule, top_k=self.top_k)
        pipe.point_seed = self.seed
        valid, frame = batch.valid_tensor(), tuple(batch.images.shape[-2:])
        start = time.perf_counter()
        for p in proposals:
            select_points_by_rule(p.mask_logits, valid, frame, self.rule, self.top_k, p.valid_sizes, self.seed)
        middle = time.perf_counter()
        logits, _ = pipe.classify(batch, proposals)  # chooses the points again, then classifies
        self.select_seconds += middle - start
        self.classify_seconds += max(0.0, time.perf_counter() - middle - (middle - start))
        self.metrics[self.name].update(pipe.postprocess(batch, list(proposals), logits, ("vitp",))["vitp"],
                                       batch.targets)
        self._count(self.name, matches, batch, pipe.variant_probs(proposals[0], logits[0], ("vitp",))["vitp"])
        self.images += len(batch)

    def update_references(self, batch: Batch, proposals: Sequence[Proposals],
                          matches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The proposer's own classes and oracle classes on the same proposals."""
        pipe = self.model.pipeline
        variants = tuple(self.metrics)  # ("proposer",) "oracle"
        predictions = pipe.postprocess(batch, list(proposals), [None] * len(proposals), variants)
        for variant in variants:
            self.metrics[variant].update(predictions[variant], batch.targets)
        if "proposer" in self.metrics:
            self._count("proposer", matches, batch, pipe.variant_probs(proposals[0], None, ("proposer",))["proposer"])
        self.images += len(batch)

    def row(self, variant: str | None = None) -> dict[str, Any]:
        """The results of one variant (default: this rule) as a CSV row."""
        variant = variant or self.name
        row: dict[str, Any] = {"rule": variant, "images": self.images}
        row.update({k: round(v, 3) for k, v in self.metrics[variant].compute().items()})
        for size, (right, total) in self.hits[variant].items():
            row[f"acc_{size}"] = round(100.0 * right / total, 2) if total else None
            row[f"n_{size}"] = total
        if variant not in ("proposer", "oracle"):
            row["select_ms"] = round(1000 * self.select_seconds / max(self.images, 1), 2)
            row["classify_ms"] = round(1000 * self.classify_seconds / max(self.images, 1), 2)
        return row


def reference_rows(refs: RuleEval) -> list[dict[str, Any]]:
    """Rows of the proposer (when it has classes) and oracle variants; oracle has no ``acc_*``."""
    rows = [refs.row(v) for v in refs.metrics]
    for row in rows:
        if row["rule"] == "oracle":
            for size, _, _ in SIZES:
                row.pop(f"acc_{size}"), row.pop(f"n_{size}")
        row["propose_ms"] = round(1000 * refs.propose_seconds / max(refs.images, 1), 2)
    return rows


__all__ = ["POINT_RULES", "RuleEval", "build_model", "match_proposals", "parse_rule", "reference_rows"]
