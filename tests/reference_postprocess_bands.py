"""The band-wise post-processing as it was before candidates were ruled out at mask resolution and
competed band by band (commit 5254bad: src/vitp/upsampling.py, then src/vitp/postprocess.py, kept
verbatim below this note apart from the import of the first from the second). tests/test_postprocess_pruning.py
compares the current implementation with it, and scripts/bench_end_to_end.py times both. Not used by the package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 23  # floats per band of upsampled logits (32 MiB; about 8x that while a band is built)


def _row_weights(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows ``i0, i1 long[n_out]`` and weights ``w0, w1 float[n_out]`` of torch's bilinear
    resize (``align_corners=False``) along one axis, read from ``F.interpolate`` itself (a one-hot
    probe per source row), so they are its own values, clamping at the borders included."""
    probe = torch.eye(n_in)[None, :, None, :]
    w = F.interpolate(probe, size=(1, n_out), mode="bilinear", align_corners=False)[0, :, 0]
    nonzero = w != 0
    two = nonzero.sum(0) > 1
    i0 = nonzero.to(torch.uint8).argmax(0)
    i1 = torch.where(two, n_in - 1 - nonzero.flip(0).to(torch.uint8).argmax(0), i0)
    cols = torch.arange(n_out)
    return i0, i1, w[i0, cols], torch.where(two, w[i1, cols], torch.zeros(()))


class UpsampledLogits:
    """Mask logits ``float[Q, h, w]`` (padding already removed) seen at ``size`` ``(H, W)``.

    Nothing of size ``Q x H x W`` is stored: :meth:`band` gives rows ``y0:y1`` of the bilinear
    upsampling, equal to ``F.interpolate(low[None], size)[0, :, y0:y1]``: the source rows it reads
    are resized along x by ``F.interpolate`` (identity along y), then blended along y as torch's
    CPU kernel blends them, ``fma(a, w0, b * w1)`` (the fused multiply-add in float64).
    """

    def __init__(self, low: torch.Tensor, size: tuple[int, int], chunk_elements: int = CHUNK_ELEMENTS) -> None:
        self.low = low.float()
        self.size = (int(size[0]), int(size[1]))
        self.chunk_elements = chunk_elements
        self.identity = tuple(low.shape[-2:]) == self.size
        if not self.identity:
            self._y = _row_weights(low.shape[-2], self.size[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.low.shape[0], *self.size)

    def bands(self, num_queries: int | None = None) -> Iterator[tuple[int, int]]:
        """``(y0, y1)`` row ranges whose band for ``num_queries`` queries holds about
        ``chunk_elements`` floats."""
        q = max(1, self.low.shape[0] if num_queries is None else num_queries)
        rows = max(1, self.chunk_elements // (q * max(1, self.size[1])))
        for y0 in range(0, self.size[0], rows):
            yield y0, min(y0 + rows, self.size[0])

    def band(self, y0: int, y1: int, queries: torch.Tensor | None = None) -> torch.Tensor:
        """``float[q, y1 - y0, W]``: the upsampled logits of rows ``y0:y1`` (of ``queries``)."""
        low = self.low if queries is None else self.low[queries]
        if self.identity:
            return low[:, y0:y1]
        if low.shape[0] == 0 or (y0, y1) == (0, self.size[0]):
            return UpsampledLogits(low, self.size).full()
        yi0, yi1, wy0, wy1 = (t[y0:y1] for t in self._y)
        first, last = int(yi0.min()), int(yi1.max()) + 1  # the source rows this band reads
        rows = F.interpolate(low[None, :, first:last], size=(last - first, self.size[1]), mode="bilinear",
                             align_corners=False)[0]
        second = rows.index_select(1, yi1 - first).mul_(wy1[:, None]).double()
        return torch.addcmul(second, rows.double().index_select(1, yi0 - first), wy0.double()[:, None]).float()

    def full(self) -> torch.Tensor:
        """``float[Q, H, W]`` in one piece (small outputs, callers that need every query at once)."""
        if self.identity:
            return self.low
        if self.low.shape[0] == 0:
            return self.low.new_zeros((0, *self.size))
        return F.interpolate(self.low[None], size=self.size, mode="bilinear", align_corners=False)[0]

    def binary(self) -> torch.Tensor:
        """``bool[Q, H, W]``: logit > 0, built band by band."""
        out = torch.empty(self.shape, dtype=torch.bool, device=self.low.device)
        for y0, y1 in self.bands():
            out[:, y0:y1] = self.band(y0, y1) > 0
        return out
from vitp.structures import InstancePrediction, PanopticPrediction, Prediction

__all__ = ["PostProcessConfig", "UpsampledLogits", "crop_and_resize", "panoptic_inference",
           "semantic_inference", "instance_inference", "infer"]

KEEP_RULES = ("objectness", "reference")


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
    """

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    topk_instances: int = 100
    keep_rule: Literal["objectness", "reference"] = "reference"
    keep_threshold: float = 0.5
    score_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.keep_rule not in KEEP_RULES:
            raise ValueError(f"keep_rule must be one of {KEEP_RULES}, got {self.keep_rule!r}")


def crop_logits(
    mask_logits: torch.Tensor,
    valid_size: tuple[int, int],
    orig_size: tuple[int, int],
    frame_size: tuple[int, int] | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> UpsampledLogits:
    """Remove padding from ``float[Q, h, w]`` mask logits; seen at ``orig_size`` (lazily).

    ``valid_size`` is the region holding the image, in the coordinates of ``frame_size`` (the
    padded input frame); with ``frame_size=None`` it is already in mask coordinates. When the
    valid region maps onto whole mask pixels it is cropped directly (exact for masks given at the
    original resolution); otherwise the logits are first upsampled to the frame, as Mask2Former
    does.
    """
    q, h, w = mask_logits.shape
    if frame_size is None:
        frame_size = (h, w)
    crop_h = valid_size[0] * h / frame_size[0]
    crop_w = valid_size[1] * w / frame_size[1]
    if crop_h.is_integer() and crop_w.is_integer():
        cropped = mask_logits[:, : int(crop_h), : int(crop_w)]
    else:
        cropped = F.interpolate(mask_logits[None], size=frame_size, mode="bilinear", align_corners=False)[0]
        cropped = cropped[:, : valid_size[0], : valid_size[1]]
    return UpsampledLogits(cropped, orig_size, chunk_elements)


def crop_and_resize(
    mask_logits: torch.Tensor,
    valid_size: tuple[int, int],
    orig_size: tuple[int, int],
    frame_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """:func:`crop_logits` materialised: ``float[Q, H0, W0]`` (small images, tests, analysis)."""
    return crop_logits(mask_logits, valid_size, orig_size, frame_size).full()


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

    def update(self, y0: int, y1: int, band: torch.Tensor, sigmoid: torch.Tensor) -> None:
        self.out[y0:y1] = torch.einsum("qk,qhw->khw", self.probs, sigmoid).argmax(0)


class _Panoptic:
    """Kept queries compete for pixels (``score * sigmoid``); areas decide which become segments."""

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
        self.queries = keep.nonzero()[:, 0]
        self.scores, self.labels = scores[keep], labels[keep]
        self.is_thing, self.config = is_thing, config
        q, device = len(self.queries), logits.low.device
        self.winner = torch.empty(logits.size, dtype=torch.int32, device=device)
        self.inside = torch.zeros(logits.size, dtype=torch.bool, device=device)
        self.won_area, self.win_anywhere, self.own_area = (torch.zeros(q, dtype=torch.long, device=device)
                                                           for _ in range(3))

    def update(self, y0: int, y1: int, band: torch.Tensor, sigmoid: torch.Tensor) -> None:
        q = len(self.queries)
        winner = (self.scores[:, None, None] * sigmoid).argmax(0)
        binary = sigmoid >= 0.5
        inside = binary.gather(0, winner[None])[0]  # the winning query's own mask covers the pixel
        self.won_area += torch.bincount(winner[inside], minlength=q)
        self.win_anywhere += torch.bincount(winner.flatten(), minlength=q)
        self.own_area += torch.count_nonzero(binary, dim=(1, 2))
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

    def update(self, y0: int, y1: int, band: torch.Tensor, sigmoid: torch.Tensor) -> None:
        masks = band > 0
        self.inside_sum += (sigmoid * masks).flatten(1).sum(1).double()
        self.area += torch.count_nonzero(masks, dim=(1, 2))
        if self.threshold <= 0:
            self.masks[:, y0:y1] = masks

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
        every = len(needed) == logits.shape[0]
        select = {name: None if torch.equal(p.queries, needed) else torch.searchsorted(needed, p.queries)
                  for name, p in parts.items()}
        for y0, y1 in logits.bands(len(needed)):
            band = logits.band(y0, y1, None if every else needed)
            sigmoid = band.sigmoid()
            for name, part in parts.items():
                if len(part.queries):
                    s = select[name]
                    part.update(y0, y1, band if s is None else band[s], sigmoid if s is None else sigmoid[s])
    prediction = Prediction()
    if "semantic" in parts:
        prediction.semantic = parts["semantic"].out
    if "panoptic" in parts:
        prediction.panoptic = parts["panoptic"].finish()
    if "instance" in parts:
        prediction.instance = parts["instance"].finish()
    return prediction
