"""The three tasks' parts of the post-processing, which :func:`vitp.postprocess.infer` drives band
by band: each names the queries it needs for a band of rows (``band_queries``), reads them
(``update``) and gives its result (``out`` / ``finish``).

* :class:`_Semantic`: ``argmax_k sum_q p[q, k] sigmoid_q`` per pixel, summing per band only the
  classes that may win there (``vitp.rule_out.class_competition``).
* :class:`_Panoptic`: kept candidates compete for pixels; only those that may win a band read it
  (``vitp.rule_out.candidate_competition``).
* :class:`_Instance`: top-k (query, thing class) pairs rescored by mask quality; a query reads
  only the bands its mask may reach.

Every rule-out is exact, and applies only where it pays: panoptic candidates and semantic classes
on outputs of at least ``LOCAL_MIN_ELEMENTS`` candidate- (class-) pixels, instance queries on
outputs read in several bands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vitp.cpu_ops import above
from vitp.rule_out import SUBSET_MIN_CLASSES, candidate_competition, class_competition, class_scores, first_argmax
from vitp.structures import InstancePrediction, PanopticPrediction
from vitp.upsampling import UpsampledLogits

if TYPE_CHECKING:
    from vitp.postprocess import PostProcessConfig

LOCAL_MIN_ELEMENTS = 1 << 21  # below this many candidate-pixels one whole-image pass is cheaper
# (measured on 2 cores: 256 px images with ~20 candidates lose 2-3 ms to the mask-resolution tests,
# 640 x 480 and larger gain 5-10x; docs/benchmarks.md)


class _Semantic:
    """``argmax_k sum_q p[q, k] sigmoid(logit_q)`` per pixel.

    With ``rule_out`` (large outputs), each band of rows sums only the classes that may win there
    (exact: :func:`vitp.rule_out.class_competition`); a band where one class competes alone is
    that class, and reads no logits for this task."""

    def __init__(self, logits: UpsampledLogits, class_probs: torch.Tensor, rule_out: bool = True) -> None:
        self.logits = logits
        self.queries = torch.arange(logits.shape[0], device=logits.low.device)
        self.probs = class_probs[:, :-1].float()
        # no query: no class mass anywhere, and the first class wins every pixel (as first_argmax of zeros)
        empty = torch.zeros if logits.shape[0] == 0 else torch.empty
        self.out = empty(logits.size, dtype=torch.long, device=logits.low.device)
        self.may_win: torch.Tensor | None = None  # bool[K, h]: the classes competing per cell row
        self._band: tuple[tuple[int, int], torch.Tensor] | None = None  # the last band's classes
        k, (h, w), (H, W) = self.probs.shape[1], logits.low.shape[-2:], logits.size
        # with fewer than SUBSET_MIN_CLASSES classes every class is summed wherever two compete, so
        # only bands of one class are spared: worth the bounds' cost on large upsamplings alone
        # (measured, 11 classes: 1.2x the time at 2.5x the mask's side, 0.75x at 5x; docs/benchmarks.md)
        worth = k >= SUBSET_MIN_CLASSES or H * W >= 16 * h * w
        if rule_out and k > 1 and worth and not logits.identity and k * H * W >= LOCAL_MIN_ELEMENTS:
            self.may_win = class_competition(logits, self.probs)

    def band_classes(self, y0: int, y1: int) -> torch.Tensor | None:
        """The classes (sorted) that may win a pixel of rows ``y0:y1``; None: every class."""
        if self.may_win is None:
            return None
        if self._band is None or self._band[0] != (y0, y1):  # asked by band_queries, then by update
            self._band = ((y0, y1), self.logits.in_rows(self.may_win, y0, y1).nonzero()[:, 0])
        return self._band[1]

    def band_queries(self, y0: int, y1: int) -> torch.Tensor:
        classes = self.band_classes(y0, y1)
        return self.queries if classes is None or len(classes) > 1 else self.queries[:0]

    def update(self, y0: int, y1: int, queries: torch.Tensor, band: torch.Tensor, sigmoid: torch.Tensor,
               pick: torch.Tensor | None = None) -> None:
        classes = self.band_classes(y0, y1)
        if classes is not None and len(classes) == 1:
            self.out[y0:y1] = classes[0]
            return
        if pick is not None:  # the band holds more queries than this part reads (never, as yet)
            sigmoid = sigmoid.index_select(0, pick)
        if classes is not None and self.probs.shape[1] < SUBSET_MIN_CLASSES:
            classes = None  # few classes: sum them all (cheap, and a subset's sums could round otherwise)
        best = first_argmax(None, class_scores(self.probs, sigmoid, classes))
        self.out[y0:y1] = best if classes is None else classes[best]


def _row_sums(values: torch.Tensor) -> torch.Tensor:
    """``float[q]``: the sum of each of ``values[q, h, w]``, each rounded as among other rows: torch
    splits the sum of a lone large row between threads, which rounds it otherwise."""
    flat = values.flatten(1)
    return flat.sum(1) if len(flat) != 1 else flat.expand(2, -1).sum(1)[:1]


def _count(masks: torch.Tensor) -> torch.Tensor:
    """``long[q]``: the true pixels of each of ``masks bool[q, h, w]``; ``count_nonzero(dim)`` and
    ``sum(dim)`` widen every pixel to int64 first, 10x slower on CPU than summing bytes into int32."""
    return masks.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32).long()


class _Panoptic:
    """Kept queries compete for pixels (``score * sigmoid``); areas decide which become segments.

    With ``config.rule_out``, candidates that cannot win a pixel are dropped at mask resolution and
    each band of rows reads only the candidates that compete in it (exact: see :func:`vitp.rule_out.candidate_competition`).
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
            may_win, may_cover = candidate_competition(logits, scores[keep], keep)
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
        return self.queries[self.logits.in_rows(self.rows, y0, y1)]

    def update(self, y0: int, y1: int, queries: torch.Tensor, band: torch.Tensor, sigmoid: torch.Tensor,
               pick: torch.Tensor | None = None) -> None:
        if pick is not None:  # only the sigmoid of this band's candidates is read
            sigmoid = sigmoid.index_select(0, pick)
        q = len(self.queries)
        k = torch.searchsorted(self.queries, queries)  # candidate index of each band query
        binary = above(sigmoid, 0.5, inclusive=True)
        self.own_area.index_add_(0, k, _count(binary))
        if self.local:
            win = self.logits.in_rows(self.may_win[k], y0, y1)
            k, sigmoid, binary = k[win], sigmoid[win], binary[win]
        local = first_argmax(self.scores[k], sigmoid)
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
        # bool[n, h]: the query's mask (logit > 0) may reach that cell row; elsewhere it adds nothing.
        # Only for outputs read in several bands (in one, nearly every query reaches it)
        self.may_cover: torch.Tensor | None = None
        if config.rule_out and n > 1 and not logits.identity and n * logits.size[0] * logits.size[1] > logits.chunk_elements:
            self.may_cover = (logits.upper_bound(self.queries) > 0).any(2)
        empty = torch.empty if self.may_cover is None else torch.zeros  # rows never read stay False
        self.masks = empty((n if self.threshold <= 0 else 0, *logits.size), dtype=torch.bool, device=device)

    def band_queries(self, y0: int, y1: int) -> torch.Tensor:
        if self.may_cover is None:
            return self.queries
        return self.queries[self.logits.in_rows(self.may_cover, y0, y1)]

    def update(self, y0: int, y1: int, queries: torch.Tensor, band: torch.Tensor, sigmoid: torch.Tensor,
               pick: torch.Tensor | None = None) -> None:
        """``pick``: the rows of ``band`` / ``sigmoid`` that are ``queries`` (None: all). A band
        mostly of this part's queries is read whole and the per-query results are picked, rather
        than copying the picked rows of the band first."""
        if pick is not None and 2 * len(pick) < len(band):
            band, sigmoid, pick = band.index_select(0, pick), sigmoid.index_select(0, pick), None
        masks = above(band)
        inside_sum, area = _row_sums(sigmoid * masks).double(), _count(masks)
        if pick is not None:
            inside_sum, area = inside_sum[pick], area[pick]
        # the band's queries among this part's (all of them: a slice, so the masks are a plain copy)
        k = slice(None) if len(queries) == len(self.queries) else torch.searchsorted(self.queries, queries)
        self.inside_sum[k] += inside_sum
        self.area[k] += area
        if self.threshold <= 0:
            self.masks[k, y0:y1] = masks if pick is None else masks[pick]

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
            masks[:, y0:y1] = above(self.logits.band(y0, y1, self.queries[needed]))[position]
        return InstancePrediction(masks, self.labels[order], scores[order])
