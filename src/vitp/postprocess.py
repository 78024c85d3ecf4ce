"""Mask logits + class probabilities -> semantic, instance and panoptic results.

One implementation, used by validation, test and predict. Semantics follow Mask2Former's
inference (object-mask threshold, overlap threshold, stuff of one class merged into one segment,
top-k instances rescored by mask confidence); results are at the original image size with the
padding removed.

Memory is bounded by design: the mask logits stay at mask resolution (padding cropped) in
:class:`UpsampledLogits`, and each task reads them back at the output size a band of rows at a
time (about ``chunk_elements`` floats per band), so no ``float[Q, H0, W0]`` tensor is ever built.
Peak memory is the low-resolution logits, one band, and the outputs (``long[H0, W0]`` maps and
the kept instances' ``bool[H0, W0]`` masks). The bands (``vitp.upsampling``) are computed with
the arithmetic of torch's own bilinear kernel (``F.interpolate``, ``align_corners=False``), so the
results equal those of interpolating the whole stack at once, up to float32 ulps in some shapes
(``vitp.upsampling``; ``tests/reference_postprocess.py`` is the old code, ``tests/test_postprocess_memory.py``
compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from vitp.predictions import resize_prediction
from vitp.structures import InstancePrediction, PanopticPrediction, Prediction
from vitp.upsampling import UpsampledLogits, crop_and_resize, crop_logits

__all__ = ["PostProcessConfig", "UpsampledLogits", "crop_and_resize", "crop_logits", "panoptic_inference",
           "semantic_inference", "instance_inference", "infer", "resize_prediction"]

KEEP_RULES = ("objectness", "reference")
LOCAL_BANDS = 8  # at least this many bands of rows (of at most 64 rows) when the panoptic part reads
# only its local candidates: short enough to localise, long enough that per-band overhead stays small
LOCAL_MIN_ELEMENTS = 1 << 21  # below this many candidate-pixels one whole-image pass is cheaper
# (measured on 2 cores: 256 px images with ~20 candidates lose 2-3 ms to the mask-resolution tests,
# 640 x 480 and larger gain 5-10x; docs/benchmarks.md)


@dataclass(frozen=True)
class PostProcessConfig:
    """Thresholds of the Mask2Former-style post-processing and the panoptic keep rule.

    Class probabilities ``p[Q, K + 1]`` factor as ``p[:, k] = objectness * p(k | object)`` and
    ``p[:, K] = 1 - objectness``. Each panoptic segment candidate is *labelled* with its most likely
    class and *ranked* (which query wins a pixel) by ``objectness * p(label | object)`` under both
    rules; they differ in which candidates are *kept*:

    * ``reference`` (Mask2Former, ViT-P): the top of ``p`` over all K + 1 columns is a class and
      exceeds ``object_mask_threshold``. Keeping then depends on class confidence: fusing with a
      less certain classifier flattens ``p`` and drops segments.
    * ``objectness``: ``objectness > keep_threshold``, whatever the class confidence.

    overlap_threshold: a segment is kept only if the part it wins in the argmax is at least this
        fraction of its own (sigmoid >= 0.5) mask.
    topk_instances: number of (query, class) pairs kept for instance segmentation.
    score_threshold: panoptic segment candidates whose score is below it are not kept (before
        they compete for pixels), nor instances whose final score is below it; 0 keeps all.
    rule_out: on large outputs, leave out at mask resolution the panoptic candidates that cannot
        win a pixel, and read per band of rows only those that compete there (exact: the result is
        the same; False only to measure what it saves).
    """

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    topk_instances: int = 100
    keep_rule: Literal["objectness", "reference"] = "reference"
    keep_threshold: float = 0.5
    score_threshold: float = 0.0
    rule_out: bool = True

    def __post_init__(self) -> None:
        if self.keep_rule not in KEEP_RULES:
            raise ValueError(f"keep_rule must be one of {KEEP_RULES}, got {self.keep_rule!r}")


def _lazy(mask_logits: torch.Tensor | UpsampledLogits) -> UpsampledLogits:
    if isinstance(mask_logits, UpsampledLogits):
        return mask_logits
    return UpsampledLogits(mask_logits, tuple(mask_logits.shape[-2:]))


class _Semantic:
    """``argmax_k sum_q p[q, k] sigmoid(logit_q)`` per pixel."""

    def __init__(self, logits: UpsampledLogits, class_probs: torch.Tensor) -> None:
        self.queries = torch.arange(logits.shape[0], device=logits.low.device)
        self.probs = class_probs[:, :-1].float()
        self.out = torch.empty(logits.size, dtype=torch.long, device=logits.low.device)

    def band_queries(self, y0: int, y1: int) -> torch.Tensor:
        return self.queries

    def update(self, y0: int, y1: int, queries: torch.Tensor, band: torch.Tensor, sigmoid: torch.Tensor,
               pick: torch.Tensor | None = None) -> None:
        if pick is not None:  # never: every band reads every query
            sigmoid = sigmoid.index_select(0, pick)
        scores = torch.einsum("qk,qhw->khw", self.probs, sigmoid)
        self.out[y0:y1] = _first_argmax(None, scores)


def _count(masks: torch.Tensor) -> torch.Tensor:
    """``long[q]``: the true pixels of each of ``masks bool[q, h, w]``; ``count_nonzero(dim)`` and
    ``sum(dim)`` widen every pixel to int64 first, 10x slower on CPU than summing bytes into int32."""
    return masks.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32).long()


def _competition(logits: UpsampledLogits, scores: torch.Tensor, queries: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per panoptic candidate and cell row (mask resolution, :meth:`UpsampledLogits.bounds`):
    ``(may_win bool[q, h], may_cover bool[q, h])``.

    ``may_win``: the candidate may win a pixel of the argmax (``score * sigmoid``) in that row: its
    best possible value in some cell is not below the value some candidate is sure to reach there.
    ``may_cover``: its own mask (sigmoid >= 0.5) may reach that row. A candidate outside
    ``may_win`` there wins no pixel of it, and outside ``may_cover`` adds nothing to its own area,
    so full-size work per band of rows involves only the candidates that compete in it: the cost
    grows with local competition, not with every candidate the keep rule lets through.
    """
    lower, upper = logits.bounds(queries)
    s = scores[:, None, None]
    sure = (s * lower.sigmoid()).amax(0) * (1 - 1e-6)  # a few ulps below, for rounding
    return ((s * upper.sigmoid()) >= sure).any(2), (upper >= 0).any(2)


def _first_argmax(scores: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    """``(scores[:, None, None] * values).argmax(0)`` (``values.argmax(0)`` when ``scores`` is None;
    the first maximum on ties, as torch's), as a running maximum over the candidates (or classes)
    of a band: several times cheaper than torch's reduction over the outer dimension, and free
    when one candidate competes alone."""
    index = torch.zeros(values.shape[1:], dtype=torch.long, device=values.device)
    if len(values) > 1:
        best = values[0].clone() if scores is None else scores[0] * values[0]
        better = torch.empty(best.shape, dtype=torch.bool, device=best.device)
        for j in range(1, len(values)):
            value = values[j] if scores is None else scores[j] * values[j]
            torch.gt(value, best, out=better)
            index.masked_fill_(better, j)
            torch.maximum(value, best, out=best)
    return index


class _Panoptic:
    """Kept queries compete for pixels (``score * sigmoid``); areas decide which become segments.

    With ``config.rule_out``, candidates that cannot win a pixel are dropped at mask resolution and
    each band of rows reads only the candidates that compete in it (exact: see :func:`_competition`).
    """

    def __init__(self, logits: UpsampledLogits, class_probs: torch.Tensor, is_thing: torch.Tensor,
                 config: PostProcessConfig) -> None:
        num_classes = class_probs.shape[-1] - 1
        if config.keep_rule == "reference":
            scores, labels = class_probs.float().max(-1)
            keep = (labels != num_classes) & (scores > config.object_mask_threshold)
        else:
            scores, labels = class_probs[:, :-1].float().max(-1)
            keep = (1.0 - class_probs[:, -1].float()) > config.keep_threshold
        if config.score_threshold > 0:
            keep &= scores >= config.score_threshold
        keep = keep.nonzero()[:, 0]
        self.logits = logits
        self.local = config.rule_out and len(keep) > 1 and len(keep) * logits.size[0] * logits.size[1] >= LOCAL_MIN_ELEMENTS
        if self.local:
            may_win, may_cover = _competition(logits, scores[keep], keep)
            competes = may_win.any(1)
            keep, self.may_win, may_cover = keep[competes], may_win[competes], may_cover[competes]
            self.rows = self.may_win | may_cover
        self.queries, self.scores, self.labels = keep, scores[keep], labels[keep]
        self.is_thing, self.config = is_thing, config
        q, device = len(self.queries), logits.low.device
        self.winner = torch.empty(logits.size, dtype=torch.int32, device=device)
        self.inside = torch.zeros(logits.size, dtype=torch.bool, device=device)
        self.won_area, self.win_anywhere, self.own_area = (torch.zeros(q, dtype=torch.long, device=device)
                                                           for _ in range(3))

    def band_queries(self, y0: int, y1: int) -> torch.Tensor:
        """The candidates (query ids, sorted) that rows ``y0:y1`` need."""
        if not self.local:
            return self.queries
        r0, r1 = self.logits.cell_rows(y0, y1)
        return self.queries[self.rows[:, r0:r1 + 1].any(1)]

    def update(self, y0: int, y1: int, queries: torch.Tensor, band: torch.Tensor, sigmoid: torch.Tensor,
               pick: torch.Tensor | None = None) -> None:
        if pick is not None:  # only the sigmoid of this band's candidates is read
            sigmoid = sigmoid.index_select(0, pick)
        q = len(self.queries)
        k = torch.searchsorted(self.queries, queries)  # candidate index of each band query
        binary = sigmoid >= 0.5
        self.own_area.index_add_(0, k, _count(binary))
        if self.local:
            r0, r1 = self.logits.cell_rows(y0, y1)
            win = self.may_win[k, r0:r1 + 1].any(1)
            k, sigmoid, binary = k[win], sigmoid[win], binary[win]
        local = _first_argmax(self.scores[k], sigmoid)
        inside = binary.gather(0, local[None])[0]  # the winning query's own mask covers the pixel
        winner = k[local]
        self.won_area += torch.bincount(winner[inside], minlength=q)
        self.win_anywhere += torch.bincount(winner.flatten(), minlength=q)
        self.winner[y0:y1] = winner
        self.inside[y0:y1] = inside

    def finish(self) -> PanopticPrediction:
        q, device = len(self.queries), self.winner.device
        segment_of = torch.full((q,), -1, dtype=torch.long, device=device)
        stuff_segment: dict[int, int] = {}
        out_labels: list[int] = []
        out_scores: list[float] = []
        for k in range(q):
            label = int(self.labels[k])
            if self.win_anywhere[k] == 0 or self.own_area[k] == 0 or self.won_area[k] == 0:
                continue
            if self.win_anywhere[k] / self.own_area[k] < self.config.overlap_threshold:
                continue
            if not bool(self.is_thing[label]) and label in stuff_segment:
                segment_of[k] = stuff_segment[label]
                continue
            index = len(out_labels)
            if not bool(self.is_thing[label]):
                stuff_segment[label] = index
            segment_of[k] = index
            out_labels.append(label)
            out_scores.append(float(self.scores[k]))
        if q == 0:
            segments = torch.full(self.winner.shape, -1, dtype=torch.long, device=device)
        else:
            segments = torch.where(self.inside, segment_of[self.winner.long()], -1)
        return PanopticPrediction(segments, torch.tensor(out_labels, dtype=torch.long, device=device),
                                  torch.tensor(out_scores, dtype=torch.float, device=device))


class _Instance:
    """Top-k (query, thing class) pairs rescored by mask quality; masks stored only for instances
    that pass ``score_threshold`` (in the same pass when it is 0, else in a second pass)."""

    def __init__(self, logits: UpsampledLogits, class_probs: torch.Tensor, is_thing: torch.Tensor,
                 config: PostProcessConfig) -> None:
        num_classes = class_probs.shape[-1] - 1
        probs = class_probs[:, :-1].float() * is_thing[None, :].to(class_probs.device)
        scores, flat_index = probs.flatten().topk(min(config.topk_instances, probs.numel()))
        labels, query = flat_index % num_classes, flat_index // num_classes
        positive = scores > 0
        self.scores, self.labels, query = scores[positive], labels[positive], query[positive]
        self.queries, self.slot = torch.unique(query, return_inverse=True)
        device, n = logits.low.device, len(self.queries)
        self.inside_sum = torch.zeros(n, dtype=torch.float64, device=device)
        self.area = torch.zeros(n, dtype=torch.long, device=device)
        self.logits, self.threshold = logits, config.score_threshold
        self.masks = torch.empty((n if self.threshold <= 0 else 0, *logits.size), dtype=torch.bool, device=device)

    def band_queries(self, y0: int, y1: int) -> torch.Tensor:
        return self.queries

    def update(self, y0: int, y1: int, queries: torch.Tensor, band: torch.Tensor, sigmoid: torch.Tensor,
               pick: torch.Tensor | None = None) -> None:
        """``pick``: the rows of ``band`` / ``sigmoid`` that are this part's queries (None: all).
        Most of the band's queries are usually needed, so it is read whole and the per-query
        results are picked, rather than copying the picked rows of the band first."""
        masks = band > 0
        inside_sum = (sigmoid * masks).flatten(1).sum(1).double()
        area = _count(masks)
        if pick is not None:
            inside_sum, area = inside_sum[pick], area[pick]
        self.inside_sum += inside_sum
        self.area += area
        if self.threshold <= 0:
            self.masks[:, y0:y1] = masks if pick is None else masks[pick]

    def finish(self) -> InstancePrediction:
        quality = (self.inside_sum / (self.area.double() + 1e-6)).float()
        scores = self.scores * quality[self.slot]
        order = scores.argsort(descending=True)
        if self.threshold > 0:
            order = order[scores[order] >= self.threshold]
        slot = self.slot[order]
        if self.threshold <= 0:
            return InstancePrediction(self.masks[slot], self.labels[order], scores[order])
        needed = torch.unique(slot)  # second pass: only the kept instances' masks at full size
        masks = torch.empty((len(order), *self.logits.size), dtype=torch.bool, device=scores.device)
        position = torch.searchsorted(needed, slot)
        for y0, y1 in self.logits.bands(len(needed)) if len(needed) else ():
            masks[:, y0:y1] = (self.logits.band(y0, y1, self.queries[needed]) > 0)[position]
        return InstancePrediction(masks, self.labels[order], scores[order])


def semantic_inference(mask_logits: torch.Tensor | UpsampledLogits, class_probs: torch.Tensor) -> torch.Tensor:
    """``float[Q, H, W]`` logits, ``float[Q, K + 1]`` probabilities -> ``long[H, W]`` classes."""
    return infer(mask_logits, class_probs, torch.zeros(0, dtype=torch.bool), ("semantic",)).semantic


def panoptic_inference(mask_logits: torch.Tensor | UpsampledLogits, class_probs: torch.Tensor,
                       is_thing: torch.Tensor, config: PostProcessConfig = PostProcessConfig()) -> PanopticPrediction:
    """Mask2Former panoptic inference for one image (logits seen at the output resolution)."""
    return infer(mask_logits, class_probs, is_thing, ("panoptic",), config).panoptic


def instance_inference(mask_logits: torch.Tensor | UpsampledLogits, class_probs: torch.Tensor,
                       is_thing: torch.Tensor, config: PostProcessConfig = PostProcessConfig()) -> InstancePrediction:
    """Mask2Former instance inference: top-k (query, thing class) pairs rescored by mask quality."""
    return infer(mask_logits, class_probs, is_thing, ("instance",), config).instance


def infer(
    mask_logits: torch.Tensor | UpsampledLogits,
    class_probs: torch.Tensor,
    is_thing: torch.Tensor,
    tasks: tuple[str, ...] = ("panoptic", "semantic", "instance"),
    config: PostProcessConfig = PostProcessConfig(),
) -> Prediction:
    """Run the requested tasks on logits at (or lazily seen at, :class:`UpsampledLogits`) the
    output size ``[Q, H0, W0]``: one pass over bands of rows serves every task."""
    logits = _lazy(mask_logits)
    parts: dict[str, Any] = {}
    if "semantic" in tasks:
        parts["semantic"] = _Semantic(logits, class_probs)
    if "panoptic" in tasks:
        parts["panoptic"] = _Panoptic(logits, class_probs, is_thing, config)
    if "instance" in tasks:
        parts["instance"] = _Instance(logits, class_probs, is_thing, config)
    needed = torch.unique(torch.cat([p.queries for p in parts.values()])) if parts else None
    if needed is not None and len(needed):
        # the panoptic part reads a subset per band (the candidates competing there); alone, it gets
        # short bands. Beside other tasks (which read every query) the bands keep their size, so the
        # instance scores' float sums are taken over the same bands as before
        local = "panoptic" in parts and parts["panoptic"].local and len(parts) == 1
        max_rows = -(-logits.size[0] // max(LOCAL_BANDS, logits.size[0] // 64)) if local else None
        for y0, y1 in logits.bands(len(needed), max_rows):
            wanted = {name: part.band_queries(y0, y1) for name, part in parts.items() if len(part.queries)}
            rows = torch.unique(torch.cat(list(wanted.values())))  # sorted query ids read in this band
            every = len(rows) == logits.shape[0]
            band = logits.band(y0, y1, None if every else rows)
            sigmoid = band.sigmoid()
            for name, queries in wanted.items():
                # pick: where a part's queries sit among the band's rows (None: all of them); each part
                # copies out what it needs, or reads the band whole and picks its results
                pick = None if torch.equal(queries, rows) else torch.searchsorted(rows, queries)
                parts[name].update(y0, y1, queries, band, sigmoid, pick)
    prediction = Prediction()
    if "semantic" in parts:
        prediction.semantic = parts["semantic"].out
    if "panoptic" in parts:
        prediction.panoptic = parts["panoptic"].finish()
    if "instance" in parts:
        prediction.instance = parts["instance"].finish()
    return prediction
