"""Mask logits at mask resolution, read back at a larger size one band of rows at a time.

:class:`UpsampledLogits` is what ``vitp.postprocess`` works on: it gives
``F.interpolate(low[None], size, mode="bilinear", align_corners=False)[0]`` but only ever builds a
band of about ``chunk_elements`` floats. Value for value equal in the shapes tested (e.g. 64 x 48 ->
1500 x 1000); in others (e.g. 16 x 16 -> 64 x 64) torch's kernel rounds differently and a band
value may differ by one or two float32 ulps (measured 2026-12-06), so a pixel exactly at a
threshold may flip. The band of all rows (small outputs) is ``F.interpolate`` itself.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from vitp.cpu_ops import above

__all__ = ["BAND_ELEMENTS", "CHUNK_ELEMENTS", "UpsampledLogits", "crop_and_resize", "crop_logits"]

CHUNK_ELEMENTS = 1 << 23  # at most this many upsampled floats (32 MiB) are built in one piece
BAND_ELEMENTS = 1 << 21  # floats per band when an output is read in several (8 MiB: each band's
# temporaries stay below glibc's largest mmap threshold, 32 MiB, so they are reused from the heap
# rather than mapped and faulted in afresh; 0.7x the time of 32 MiB bands at 1280 x 960, 2 cores)


def _resize(stack: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``float[Q, h, w]`` resized to ``size`` (bilinear, ``align_corners=False``); an empty stack
    (no query, which ``F.interpolate`` refuses) stays empty."""
    if stack.shape[0] == 0:
        return stack.new_zeros((0, *size))
    return F.interpolate(stack[None], size=size, mode="bilinear", align_corners=False)[0]


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


def _window2(x: torch.Tensor, op) -> torch.Tensor:
    """``op`` (max or min) over each 2 x 2 window ``[i:i+2, j:j+2]`` of ``x[..., h, w]``, clamped at
    the last row and column (shifted views: far cheaper on CPU than a stride-1 pooling)."""
    rows = torch.cat([op(x[..., :-1, :], x[..., 1:, :]), x[..., -1:, :]], dim=-2)
    return torch.cat([op(rows[..., :-1], rows[..., 1:]), rows[..., -1:]], dim=-1)


class UpsampledLogits:
    """Mask logits ``float[Q, h, w]`` (padding already removed) seen at ``size`` ``(H, W)``.

    Nothing of size ``Q x H x W`` is stored: :meth:`band` gives rows ``y0:y1`` of the bilinear
    upsampling, ``F.interpolate(low[None], size)[0, :, y0:y1]`` (see the module note): the source rows it reads
    are resized along x by ``F.interpolate`` (identity along y), then blended along y as torch's
    CPU kernel blends them, ``fma(a, w0, b * w1)`` (the fused multiply-add in float64), one run of
    output rows with the same two source rows at a time (5x cheaper at 1280 x 960 than gathering
    the band's source rows first: fewer passes over memory, each run small enough to stay in cache).
    """

    def __init__(self, low: torch.Tensor, size: tuple[int, int], chunk_elements: int = CHUNK_ELEMENTS) -> None:
        self.low = low.float()
        self.size = (int(size[0]), int(size[1]))
        self.chunk_elements = chunk_elements
        self.identity = tuple(low.shape[-2:]) == self.size
        self._full: torch.Tensor | None = None  # :meth:`full`, kept once built
        if not self.identity:
            self._y = _row_weights(low.shape[-2], self.size[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.low.shape[0], *self.size)

    def bands(self, num_queries: int | None = None, max_rows: int | None = None) -> Iterator[tuple[int, int]]:
        """``(y0, y1)`` row ranges for ``num_queries`` queries: one band of all rows when it holds at
        most ``chunk_elements`` floats, else bands of about ``BAND_ELEMENTS`` (and at most
        ``max_rows`` rows)."""
        q = max(1, self.low.shape[0] if num_queries is None else num_queries)
        per_row = q * max(1, self.size[1])
        rows = self.size[0] if per_row * self.size[0] <= self.chunk_elements else \
            max(1, min(self.chunk_elements, BAND_ELEMENTS) // per_row)
        rows = min(rows, max_rows) if max_rows else rows
        for y0 in range(0, self.size[0], rows):
            yield y0, min(y0 + rows, self.size[0])

    def band(self, y0: int, y1: int, queries: torch.Tensor | None = None) -> torch.Tensor:
        """``float[q, y1 - y0, W]``: the upsampled logits of rows ``y0:y1`` (of ``queries``)."""
        low = self.low if queries is None else self.low[queries]
        if self.identity:
            return low[:, y0:y1]
        if low.shape[0] == 0 or (y0, y1) == (0, self.size[0]):
            if queries is None:
                return self.full()
            if self._full is not None:  # read the kept whole rather than upsampling the subset again
                return self._full[queries]
            return UpsampledLogits(low, self.size).full()
        yi0, yi1, wy0, wy1 = (t[y0:y1] for t in self._y)
        first, last = int(yi0.min()), int(yi1.max()) + 1  # the source rows this band reads
        rows = F.interpolate(low[None, :, first:last], size=(last - first, self.size[1]), mode="bilinear",
                             align_corners=False)[0]
        rows_wide = rows.double()
        w1, w0 = wy1[None, :, None], wy0.double()[None, :, None]
        out = rows.new_empty((rows.shape[0], y1 - y0, self.size[1]))
        # output rows that blend the same two source rows form a run: each run is blended from
        # those two rows by broadcasting (no gathered copy of the band), a few rows at a time
        i0, i1 = (yi0 - first).tolist(), (yi1 - first).tolist()
        starts = [r for r in range(len(i0)) if r == 0 or (i0[r], i1[r]) != (i0[r - 1], i1[r - 1])] + [len(i0)]
        for s, e in zip(starts[:-1], starts[1:]):
            second = (rows[:, i1[s]:i1[s] + 1] * w1[:, s:e]).double()
            out[:, s:e].copy_(second.addcmul_(rows_wide[:, i0[s]:i0[s] + 1], w0[:, s:e]))
        return out

    def in_rows(self, flags: torch.Tensor, y0: int, y1: int) -> torch.Tensor:
        """``bool[n]``: which of ``flags bool[n, h]`` (one flag per cell row of :meth:`bounds`) hold
        in some cell row that output rows ``y0:y1`` belong to."""
        r0, r1 = (y0, y1 - 1) if self.identity else (int(self._y[0][y0]), int(self._y[0][y1 - 1]))
        return flags[:, r0:r1 + 1].any(1)

    def bounds(self, queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lower, upper)``, each ``float[q, h, w]`` at mask resolution: every upsampled logit lies
        between ``lower`` and ``upper`` of one cell (the cell of its top-left source pixel).

        A bilinear value blends source rows ``i, i + 1`` and columns ``j, j + 1`` (clamped at the
        borders), so it lies between the minimum and maximum of that 2 x 2 window; a slack of
        ``1e-3 + 1e-5 |x|`` covers the rounding of the blend. Cheap tests at mask resolution use
        these bounds to rule out queries before any full-size work (``vitp.postprocess``).
        """
        low = self.low if queries is None else self.low[queries]
        lower = low if self.identity else _window2(low, torch.minimum)
        return lower - (1e-3 + 1e-5 * lower.abs()), self.upper_bound(queries, low)

    def upper_bound(self, queries: torch.Tensor | None = None, low: torch.Tensor | None = None) -> torch.Tensor:
        """The ``upper`` half of :meth:`bounds` alone (``low``: the queries' logits, when at hand)."""
        if low is None:
            low = self.low if queries is None else self.low[queries]
        upper = low if self.identity else _window2(low, torch.maximum)
        return upper + (1e-3 + 1e-5 * upper.abs())

    def full(self) -> torch.Tensor:
        """``float[Q, H, W]`` in one piece (small outputs, callers that need every query at once).

        Built once and kept: the post-processing of several variants (and the classifier's point
        masks, ``TwoStagePipeline``) read the same upsampled logits of a small image. Only the band
        of all rows (outputs of at most ``chunk_elements``) asks for it; larger outputs are read in
        bands and never kept."""
        if self.identity:
            return self.low
        if self._full is None:
            self._full = _resize(self.low, self.size)
        return self._full

    def binary(self) -> torch.Tensor:
        """``bool[Q, H, W]``: logit > 0, built band by band."""
        out = torch.empty(self.shape, dtype=torch.bool, device=self.low.device)
        for y0, y1 in self.bands():
            out[:, y0:y1] = above(self.band(y0, y1))
        return out


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
        cropped = _resize(mask_logits, frame_size)
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
