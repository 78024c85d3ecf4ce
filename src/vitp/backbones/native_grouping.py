"""Spatial grouping layers (SeNaTra-style downsampling) and the chain of their assignments.

A grouping layer maps ``N_in`` tokens on an ``(h, w)`` grid (``h``, ``w`` even) to
``N_out = N_in / 4`` tokens on the ``(h/2, w/2)`` grid with more channels. Output tokens start
from a strided 2x2 convolution of the input grid (or from learned, position-embedded queries), then
``iterations`` times::

    logits = tau * k(X_in) q(X_out)^T + relative position bias + locality mask
             (+ optional learned locality prior in the dense layer; tau optionally learned)
    A_ups  = softmax over the OUTPUT tokens, for each input token  (rows sum to 1)
    A_down = A_ups with each column renormalised to sum 1
    X_out += A_down^T v(X_in);  X_out += MLP(X_out)

*Local* layers let each input token join only the 3x3 output cells around its parent cell: their
assignment is stored compactly as ``float[B, h, w, 9]`` (candidate ``k`` = offset ``OFFSETS[k]``
from the parent), and every product is computed with unfold / fold and 2x2 reshapes, linear in ``N_in``
(no ``N_in x N_out`` matrix). The *dense* layer lets each input join any output:
``float[B, N_in, N_out]``. The ``A_ups`` of the last iteration is the layer's assignment.

``A_ups`` matrices are row-stochastic, so they chain like Markov transition matrices:
``compose`` gives, for each finest token, a distribution over the groups of a later level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
"""Candidate output cells of a local layer, relative to the input token's parent cell."""
CENTER = OFFSETS.index((0, 0))


def _sub2(t: torch.Tensor) -> torch.Tensor:
    """``[B, h, w, *r]`` -> ``[B, h/2, 2, w/2, 2, *r]`` (children of each parent cell)."""
    b, h, w, *r = t.shape
    return t.reshape(b, h // 2, 2, w // 2, 2, *r)


def _candidates(t: torch.Tensor) -> torch.Tensor:
    """``[B, h2, w2, *r]`` -> ``[B, h2, w2, 9, *r]``: value of candidate ``k`` (``t[p + OFFSETS[k]]``,
    zero outside the grid); one ``unfold``."""
    b, h2, w2, *r = t.shape
    c = t[0, 0, 0].numel()
    u = F.unfold(t.reshape(b, h2, w2, c).permute(0, 3, 1, 2), 3, padding=1)  # [B, C*9, h2*w2]
    return u.view(b, c, 9, h2, w2).permute(0, 3, 4, 2, 1).reshape(b, h2, w2, 9, *r)


def _scatter_candidates(t: torch.Tensor) -> torch.Tensor:
    """Adjoint of ``_candidates``: ``[B, h2, w2, 9, *r]`` -> ``[B, h2, w2, *r]`` where output cell
    ``p`` receives the entries of every parent ``p - OFFSETS[k]`` for candidate ``k``; one ``fold``."""
    b, h2, w2, _, *r = t.shape
    c = t[0, 0, 0, 0].numel()
    u = t.reshape(b, h2 * w2, 9, c).permute(0, 3, 2, 1).reshape(b, c * 9, h2 * w2)
    out = F.fold(u, (h2, w2), 3, padding=1)  # [B, C, h2, w2]
    return out.permute(0, 2, 3, 1).reshape(b, h2, w2, *r)


def local_valid(h2: int, w2: int, device: torch.device | None = None) -> torch.Tensor:
    """``bool[h2, w2, 9]``: candidate ``k`` of parent cell ``p`` lies inside the output grid."""
    y = torch.arange(h2, device=device)[:, None, None]
    x = torch.arange(w2, device=device)[None, :, None]
    dy = torch.tensor([o[0] for o in OFFSETS], device=device)
    dx = torch.tensor([o[1] for o in OFFSETS], device=device)
    return (y + dy >= 0) & (y + dy < h2) & (x + dx >= 0) & (x + dx < w2)


@dataclass
class Assignment:
    """``A_ups`` of one grouping layer. ``weights``: ``float[B, h, w, 9]`` (local) or
    ``float[B, N_in, N_out]`` (dense); ``in_size`` = ``(h, w)``, ``out_size`` = ``(h/2, w/2)``."""

    weights: torch.Tensor
    local: bool
    in_size: tuple[int, int]
    out_size: tuple[int, int]

    def apply(self, m: torch.Tensor) -> torch.Tensor:
        """``A_ups @ m``: ``m float[B, N_out, G]`` -> ``float[B, N_in, G]``."""
        if not self.local:
            return self.weights @ m
        (h, w), (h2, w2) = self.in_size, self.out_size
        b, g = m.shape[0], m.shape[-1]
        cand = _candidates(m.reshape(b, h2, w2, g))  # [B, h2, w2, 9, G]
        out = torch.einsum("byixjk,byxkg->byixjg", _sub2(self.weights), cand)
        return out.reshape(b, h * w, g)

    def dense(self) -> torch.Tensor:
        """``float[B, N_in, N_out]`` (materialised; for tests and small grids)."""
        if not self.local:
            return self.weights
        n_out = self.out_size[0] * self.out_size[1]
        eye = torch.eye(n_out, device=self.weights.device, dtype=self.weights.dtype)
        return self.apply(eye[None].expand(self.weights.shape[0], -1, -1))


def compose(assignments: list[Assignment]) -> torch.Tensor:
    """Product ``A_1 A_2 ... A_L``: ``float[B, N_in(first), N_out(last)]``, each row a distribution
    over the last layer's groups (computed right to left, local layers without dense matrices)."""
    m = assignments[-1].dense()
    for a in reversed(assignments[:-1]):
        m = a.apply(m)
    return m


class SpatialGrouping(nn.Module):
    """One grouping (downsampling) layer ``dim_in -> dim_out``; see the module docstring.

    Args:
        local: 3x3-neighbourhood assignment (linear cost) instead of dense.
        iterations: grouping iterations L.
        tau: logit scale (None: ``dim_out ** -0.5``).
        pos_bias: add a relative position bias (a small MLP of the offset between the input token
            and the output cell centre, in output-cell units).
        query_init: ``conv`` (strided 2x2 conv of the input grid) or ``learned`` (one learned vector
            plus a learned 8x8 position embedding resized to the output grid; content-free).
        grouping: False = plain strided-conv downsampling; the assignment is then the hard parent
            cell (one-hot), stored in the local form.
        locality: dense layer only, opt-in (0 = off): a learned locality prior
            ``- beta * |offset|^2`` added to the logits (offset from the input token to the output
            cell centre, in output-cell units; ``beta`` learned, kept >= 0, starts at this value),
            so the layer starts near the uniform grid and training moves the boundaries.
        learn_tau: opt-in: the logit scale is learned as a log-parameter (starting at ``tau``)
            clamped to ``[TAU_MIN, TAU_MAX]``.
    """

    TAU_MIN, TAU_MAX = 1e-2, 1e2

    def __init__(
        self, dim_in: int, dim_out: int, local: bool = True, iterations: int = 3, tau: float | None = None,
        pos_bias: bool = True, query_init: Literal["conv", "learned"] = "conv", grouping: bool = True,
        mlp_ratio: float = 4.0, locality: float = 0.0, learn_tau: bool = False,
    ) -> None:
        super().__init__()
        if query_init not in ("conv", "learned"):
            raise ValueError(f"query_init must be 'conv' or 'learned', got {query_init!r}")
        self.local = local if grouping else True
        self.iterations, self.grouping, self.query_init = iterations, grouping, query_init
        self.tau = dim_out ** -0.5 if tau is None else float(tau)
        if query_init == "conv" or not grouping:
            self.init_conv = nn.Conv2d(dim_in, dim_out, 2, stride=2)
            self.init_norm = nn.LayerNorm(dim_out)
        else:
            self.query = nn.Parameter(torch.zeros(dim_out))
            self.query_pos = nn.Parameter(torch.randn(1, dim_out, 8, 8) * 0.02)
        if grouping:
            self.norm_in, self.norm_q, self.norm_mlp = nn.LayerNorm(dim_in), nn.LayerNorm(dim_out), nn.LayerNorm(dim_out)
            self.k, self.v, self.q = nn.Linear(dim_in, dim_out), nn.Linear(dim_in, dim_out), nn.Linear(dim_out, dim_out)
            self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
            self.pos_mlp = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1)) if pos_bias else None
        if locality < 0:
            raise ValueError(f"locality must be >= 0, got {locality}")
        use_locality = grouping and not self.local and locality > 0
        self.locality = nn.Parameter(torch.tensor(float(locality))) if use_locality else None
        self.log_tau = nn.Parameter(torch.tensor(math.log(self.tau))) if grouping and learn_tau else None

    def scale(self) -> torch.Tensor | float:
        """The logit scale: ``tau``, or the learned ``exp(log_tau)`` clamped to [TAU_MIN, TAU_MAX]."""
        if self.log_tau is None:
            return self.tau
        return self.log_tau.clamp(math.log(self.TAU_MIN), math.log(self.TAU_MAX)).exp()

    # ------------------------------------------------------------------ pieces
    def _bias(self, offsets: torch.Tensor) -> torch.Tensor:
        """Relative position bias of offsets ``[..., 2]`` (output-cell units), log-spaced as in
        Swin v2's continuous position bias so the dense layer's far offsets stay in range."""
        return self.pos_mlp(torch.sign(offsets) * torch.log1p(offsets.abs()))[..., 0]

    def _local_bias(self, device: torch.device) -> torch.Tensor:
        """``[2, 2, 9]``: bias per child position in the parent cell and candidate."""
        i = torch.arange(2, device=device, dtype=torch.float)
        d = torch.tensor(OFFSETS, device=device, dtype=torch.float)  # [9, 2]
        off_y = d[None, None, :, 0] + 0.25 - i[:, None, None] / 2
        off_x = d[None, None, :, 1] + 0.25 - i[None, :, None] / 2
        return self._bias(torch.stack(torch.broadcast_tensors(off_y, off_x), -1))

    @staticmethod
    def _dense_offsets(h: int, w: int, device: torch.device) -> torch.Tensor:
        """``[N_in, N_out, 2]``: input token centre -> output cell centre, in output-cell units."""
        yi, xi = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        yo, xo = torch.meshgrid(torch.arange(h // 2, device=device), torch.arange(w // 2, device=device), indexing="ij")
        pi = (torch.stack([yi, xi], -1).reshape(-1, 2).float() + 0.5) / 2
        po = torch.stack([yo, xo], -1).reshape(-1, 2).float() + 0.5
        return po[None] - pi[:, None]

    def _dense_bias(self, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        """``[N_in, N_out]``: relative position bias plus the locality prior (None when neither)."""
        if self.pos_mlp is None and self.locality is None:
            return None
        offsets = self._dense_offsets(h, w, device)
        bias = 0.0
        if self.pos_mlp is not None:
            bias = self._bias(offsets)
        if self.locality is not None:
            bias = bias - self.locality.clamp(min=0) * offsets.pow(2).sum(-1)
        return bias

    def _init_out(self, grid: torch.Tensor) -> torch.Tensor:
        """Initial output tokens ``[B, h2, w2, D]`` from the input grid ``[B, h, w, C]``."""
        b, h, w, _ = grid.shape
        if hasattr(self, "init_conv"):
            return self.init_norm(self.init_conv(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        pos = nn.functional.interpolate(self.query_pos, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        return (self.query + pos[0].permute(1, 2, 0))[None].expand(b, -1, -1, -1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, Assignment]:
        """``x float[B, h*w, C]`` -> ``(float[B, h*w/4, D], Assignment)``."""
        b, n, c = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"grouping needs an even grid, got {h}x{w}")
        h2, w2 = h // 2, w // 2
        grid = x.reshape(b, h, w, c)
        out = self._init_out(grid)
        if not self.grouping:
            a = torch.zeros(b, h, w, 9, device=x.device, dtype=x.dtype)
            a[..., CENTER] = 1.0
            return out.reshape(b, h2 * w2, -1), Assignment(a, True, (h, w), (h2, w2))
        xin = self.norm_in(x)
        k, v = self.k(xin), self.v(xin)
        if self.local:
            valid = local_valid(h2, w2, x.device)  # [h2, w2, 9]
            bias = self._local_bias(x.device) if self.pos_mlp is not None else None
            k6, v6 = _sub2(k.reshape(b, h, w, -1)), _sub2(v.reshape(b, h, w, -1))
        else:
            out = out.reshape(b, h2 * w2, -1)
            bias = self._dense_bias(h, w, x.device)
        tau = self.scale()
        for _ in range(self.iterations):
            q = self.q(self.norm_q(out))
            if self.local:
                logits = tau * torch.einsum("byixjd,byxkd->byixjk", k6, _candidates(q))
                if bias is not None:
                    logits = logits + bias[None, None, :, None]  # [2,2,9] -> (i, j) child axes
                logits = logits.masked_fill(~valid[None, :, None, :, None], float("-inf"))
                a_ups = logits.softmax(-1)  # [B, h2, 2, w2, 2, 9]
                colsum = _scatter_candidates(a_ups.sum((2, 4)))  # [B, h2, w2]
                a_down = a_ups / (_candidates(colsum)[:, :, None, :, None] + 1e-6)
                msg = _scatter_candidates(torch.einsum("byixjk,byixjd->byxkd", a_down, v6))
            else:
                logits = tau * k @ q.transpose(1, 2)
                if bias is not None:
                    logits = logits + bias
                a_ups = logits.softmax(-1)  # [B, N_in, N_out]
                a_down = a_ups / (a_ups.sum(1, keepdim=True) + 1e-6)
                msg = a_down.transpose(1, 2) @ v
            out = out + msg
            out = out + self.mlp(self.norm_mlp(out))
        if self.local:
            return out.reshape(b, h2 * w2, -1), Assignment(a_ups.reshape(b, h, w, 9), True, (h, w), (h2, w2))
        return out, Assignment(a_ups, False, (h, w), (h2, w2))
