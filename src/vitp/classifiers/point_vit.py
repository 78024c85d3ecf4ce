"""PointViT: a timm ViT whose CLS token is replaced by one token per query point (ViT-P stage 2).

Two attention modes:

* ``"one_way"`` (default): patches attend only to patches (their features are exactly the
  backbone's); each point token attends to [itself ; patches]. A point's logits therefore do not
  depend on the other points, on padding points or on the rest of the batch, and the patch pass can
  run once (``encode_patches``) for any number of points (``classify_points``). Each block's
  point attention is one ``scaled_dot_product_attention`` over [cached patch keys ; own key]
  (``vit_ops.one_way_attention``): O(P x N) per block, no P x P mask.
* ``"full"``: the reference behaviour, [points ; patches] through every block with full
  self-attention (padding patches still masked out).

``point_start_block = k`` lets the patches run the first k blocks alone; point tokens join at block k
(in ``one_way`` mode they read the cached keys / values of blocks k.. only). k = 0 is the paper's
(and vitp's previous) behaviour; larger k makes every point cheaper (EoMT-style late queries).

Points are ``(y, x)`` in [-1, 1] relative to each image's valid region (see ``vitp.points``).

Why one file of ~450 lines: like timm's ``vision_transformer.py`` it is one model whose parts share
state (patch / point embedding, the patch cache, late-joining points, both attention modes); what
stands alone lives beside it (attention kernels and image preparation in ``vit_ops.py``, the
conv stem in ``stems.py``, the locality bias in ``locality.py``, checkpoint loading in ``loading.py``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

from vitp.classifiers.glimpse import PointGlimpse, PointMasks
from vitp.classifiers.locality import PointLocalityBias
from vitp.classifiers.loading import LoadReport, load_into
from vitp.structures import TrunkStates
from vitp.view_memo import ViewMemo
from vitp.classifiers.vit_ops import (
    block_forward,
    block_kv,
    block_query,
    check_block,
    prepare_images,
    self_slot_kv,
    self_slot_mask,
)

@dataclass
class PatchCache:
    """Result of ``PointViT.encode_patches``: per block keys / values of the patch tokens.

    kv: one ``(k, v)`` per block from ``start_block`` on, in the self-slot layout of
        ``vit_ops.self_slot_kv``: ``[B, heads, N + 1, e]`` (N = prefix/register tokens + patches,
        e = head_dim + 1 rounded up to a multiple of 8; the patch keys / values are ``[..., :N, :head_dim]``).
    key_mask: ``bool[B, N]``, False for padding patches.
    slot_mask: ``bool[B, 1, 1, N + 1]`` attention mask for the self-slot layout, None when no padding.
    start_block: first block the points run (``PointViT.point_start_block``).
    grid: ``(Gh, Gw)`` patch grid of the padded batch.
    image_grids: ``long[B, 2]`` patch grid covering each image's valid region.
    valid_sizes: ``long[B, 2]`` valid region of each image after rescaling (pixels).
    pos_grids: per image ``[gh, gw, D]`` patch position embedding (for ``sample_pos_embed``).
    images: the rescaled, padded input images ``[B, 3, H', W']`` (kept only for ``point_glimpse``).
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    key_mask: torch.Tensor
    grid: tuple[int, int]
    image_grids: torch.Tensor
    valid_sizes: torch.Tensor
    pos_grids: list[torch.Tensor]
    slot_mask: torch.Tensor | None = None
    start_block: int = 0
    images: torch.Tensor | None = None


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """``float[height * width, dim]`` 2-D sine-cosine position table (half the channels per axis)."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embedding needs a dim divisible by 4, got {dim}")
    freq = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4)))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        angle = coord[:, None] * freq[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


class PointViT(nn.Module):
    """Point classifier: timm ViT + one token per query point + linear head (``logits [B, P, K]``).

    Args:
        num_classes: K, number of classes (no void class). ``vitp`` links it from the data module;
            when None the head (and ``checkpoint_path``) waits for :meth:`set_num_classes`.
        model_name: timm ViT name (default DINOv2 ViT-B/14).
        pretrained: load timm's pretrained weights (needs the hub).
        checkpoint_path: local checkpoint (``.safetensors`` or torch file): timm / original DINOv2,
            Hugging Face DINOv2 (with or without registers), an official ViT-P classifier, or a
            vitp / Lightning one (see ``vitp.weights.keymaps``). ``vitp weights dinov2-small`` writes one.
        image_size: rescale each image so its valid region's long side has this size (aspect ratio
            kept); None = use the input resolution.
        attention: ``"one_way"`` (points read patches only) or ``"full"`` (reference).
        point_encoding: ``"linear"`` (reference: ``Linear(2 -> D)`` of (y, x) + CLS position
            embedding), ``"sample_pos_embed"`` (CLS token + patch position embedding sampled at the
            point) or ``"sample_patch"`` (the input patch token itself — patch embedding + position
            embedding — sampled bilinearly at the point, plus a learned zero-initialised offset:
            the point starts as a virtual patch at a sub-patch location, so it knows its local
            content from the first block and attends to the rest for context and shape).
        reinit_head: re-initialise the head when the checkpoint's head has another size.
        drop_path_rate: stochastic depth of the backbone.
        point_chunk_size: in ``one_way`` mode, classify at most this many points at once (bounds the
            point side's memory; the patch cache is shared). None = all points in one pass.
        point_start_block: k; the patch tokens run blocks 0..k-1 alone and the point tokens join at
            block k (0 = every block, the paper's setting). Must be below the depth.
        compile_blocks: wrap the per-block functions in ``torch.compile`` (lazily, on first use;
            parameters and checkpoint keys unchanged).
        pos_embed_init: ``"timm"`` keeps timm's initialisation (or the loaded weights);
            ``"sincos"`` initialises the patch position embedding with a 2-D sine-cosine table
            (still learnable) — distinct positions from step 0 help a ViT trained from scratch.
        stem: ``"patch"`` (the ViT's strided ``p x p`` patch embedding) or ``"conv"`` (3x3 stride-2
            convolutions to the same stride, see ``vitp.classifiers.stems``: learns local texture
            and shape faster when trained from scratch; not for pretrained checkpoints).
        point_locality_radius: R; with ``one_way`` attention, add a learned relative-position bias
            to the points' attention over patches within R patches of the point (Gaussian priors
            of several widths per head; see ``vitp.classifiers.locality``). None = off (the paper).
        point_glimpse: G; add to each point token a small CNN embedding of the ``G x G`` pixel window
            of the (rescaled) input image centred on the point, zero at init (see
            ``vitp.classifiers.glimpse``): the outline of objects smaller than a patch. None = off
            (the paper).
        point_glimpse_samples: samples per side of the glimpse window (default: one per pixel); the
            glimpse CNN's cost grows with its square.
        point_glimpse_masks: the glimpse also reads the window of each point's own segment mask
            (``point_masks`` of ``forward``: ground truth in training, the proposal at inference),
            so the outline comes from the mask. Needs ``point_glimpse``.
        point_glimpse_fit_box: with ``point_glimpse_masks``, the window is the square around the
            point's segment's bounding box (10 % margin, side >= ``point_glimpse``): every outline,
            small or large, fills the same grid.
        point_glimpse_head: also classify each point from its glimpse alone (a linear head on the
            glimpse embedding) and add those logits to the ViT's: a direct path for the shape read
            from the window. Needs ``point_glimpse``.
        model_kwargs: extra ``timm.create_model`` kwargs (e.g. a tiny architecture for tests).
        freeze_backbone: keep the ViT (patch and position embedding, blocks, norms) fixed: only the
            point embedding, the head and the point-side extras train, and the patch pass runs
            without autograd (a pretrained trunk as a frozen feature extractor).
        frame: ``"valid"``: each image's valid region rescaled, padding patches masked (default);
            ``"square"`` (``one_way`` only): EoMT's frame — the padded batch resized to long side
            ``image_size`` and padded to a square, class token in the patch pass, a fixed position
            table — so the patch pass is the one ``EomtProposer(share_trunk_from=k)`` shares and
            ``cache_from_trunk`` can read it instead (see ``vitp.classifiers.trunk``).
        trunk_cache_size: with ``frame="square"`` and ``freeze_backbone``, remember the patch pass of
            up to this many training views (``vitp.view_memo.ViewMemo``): a view seen again (no
            scale jitter: the same image, flipped or not) skips the trunk. About
            ``(blocks - point_start_block) * tokens * width * 4`` bytes a view. 0 = off.
        strict_load: refuse a ``checkpoint_path`` with entries that have no place in the model.
        allow_unsafe_load: let ``checkpoint_path`` be unpickled with ``weights_only=False`` (runs
            code from the file; only for files you trust). Off: such a file is refused by name.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        model_name: str = "vit_base_patch14_dinov2",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        image_size: int | None = 518,
        attention: Literal["one_way", "full"] = "one_way",
        point_encoding: Literal["linear", "sample_pos_embed", "sample_patch"] = "linear",
        reinit_head: bool = False,
        drop_path_rate: float = 0.0,
        point_chunk_size: int | None = 1024,
        model_kwargs: dict[str, Any] | None = None,
        pos_embed_init: Literal["timm", "sincos"] = "timm",
        point_start_block: int = 0,
        stem: Literal["patch", "conv"] = "patch",
        point_locality_radius: int | None = None,
        point_glimpse: int | None = None,
        point_glimpse_samples: int | None = None,
        point_glimpse_masks: bool = False,
        point_glimpse_head: bool = False,
        point_glimpse_fit_box: bool = False,
        compile_blocks: bool = False,
        strict_load: bool = True,
        allow_unsafe_load: bool = False,
        freeze_backbone: bool = False,
        frame: Literal["valid", "square"] = "valid",
        trunk_cache_size: int = 0,
    ) -> None:
        super().__init__()
        if attention not in ("one_way", "full"):
            raise ValueError(f"attention must be 'one_way' or 'full', got {attention!r}")
        if point_encoding not in ("linear", "sample_pos_embed", "sample_patch"):
            raise ValueError(
                f"point_encoding must be 'linear', 'sample_pos_embed' or 'sample_patch', got {point_encoding!r}"
            )
        kwargs = dict(model_kwargs or {})
        kwargs.update(num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path_rate)
        self.backbone = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        be = self.backbone
        for name in ("patch_embed", "blocks", "pos_embed", "cls_token"):
            if not hasattr(be, name):
                raise NotImplementedError(f"{model_name}: PointViT needs a timm VisionTransformer (no {name})")
        for blk in be.blocks:
            check_block(blk)
        if not isinstance(getattr(be, "patch_drop", nn.Identity()), nn.Identity):
            raise ValueError("patch dropout is not supported by PointViT (it would drop masked patches)")
        self.num_classes: int | None = None
        self.image_size = image_size
        self.attention = attention
        self.point_encoding = point_encoding
        self.reinit_head = reinit_head
        self.point_chunk_size = point_chunk_size
        depth = len(be.blocks)
        if not 0 <= int(point_start_block) < depth:
            raise ValueError(f"point_start_block must be in [0, {depth - 1}] for {depth} blocks, got {point_start_block}")
        self.point_start_block = int(point_start_block)
        self.compile_blocks = bool(compile_blocks)
        self._compiled: dict[str, Any] = {}
        self.embed_dim = int(be.embed_dim)
        self.patch_size = tuple(int(p) for p in be.patch_embed.patch_size)
        if stem == "conv":  # same output shape and weight names outside patch_embed.proj
            from vitp.classifiers.stems import conv_stem

            be.patch_embed.proj = conv_stem(self.patch_size[0], self.embed_dim)
        elif stem != "patch":
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.point_embed = nn.Linear(2, self.embed_dim, bias=False) if point_encoding == "linear" else None
        self.point_offset = nn.Parameter(torch.zeros(self.embed_dim)) if point_encoding == "sample_patch" else None
        self.point_locality: PointLocalityBias | None = None
        if point_locality_radius is not None:
            if attention != "one_way":
                raise ValueError("point_locality_radius needs attention='one_way'")
            self.point_locality = PointLocalityBias(depth, int(be.blocks[0].attn.num_heads), point_locality_radius)
        for name, on in (("point_glimpse_masks", point_glimpse_masks), ("point_glimpse_head", point_glimpse_head),
                         ("point_glimpse_fit_box", point_glimpse_fit_box)):
            if on and point_glimpse is None:
                raise ValueError(f"{name} needs point_glimpse (the window size)")
        self.use_glimpse_head = bool(point_glimpse_head)
        self.glimpse_head: nn.Linear | None = None
        self.point_glimpse = None if point_glimpse is None else PointGlimpse(
            point_glimpse, self.embed_dim, samples=point_glimpse_samples, masks=point_glimpse_masks,
            fit_box=point_glimpse_fit_box)
        self.head: nn.Linear | None = None
        if pos_embed_init == "sincos":
            self._init_sincos_pos_embed()
        elif pos_embed_init != "timm":
            raise ValueError(f"pos_embed_init must be 'timm' or 'sincos', got {pos_embed_init!r}")
        self.reset_point_embed()
        self.load_report: LoadReport | None = None
        self.freeze_backbone = bool(freeze_backbone)
        if frame not in ("valid", "square"):
            raise ValueError(f"frame must be 'valid' or 'square', got {frame!r}")
        if frame == "square" and (attention != "one_way" or image_size is None or point_glimpse is not None):
            raise ValueError("frame='square' needs attention='one_way', an image_size and no point_glimpse")
        self.frame = frame
        if trunk_cache_size and not (frame == "square" and freeze_backbone):
            raise ValueError("trunk_cache_size needs frame='square' and freeze_backbone=True")
        self._trunk_memo = ViewMemo(trunk_cache_size)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.checkpoint_path = checkpoint_path
        self.strict_load = bool(strict_load)
        self.allow_unsafe_load = bool(allow_unsafe_load)
        if num_classes is not None:
            self.set_num_classes(num_classes)

    @property
    def needs_point_masks(self) -> bool:
        """True when ``forward`` needs ``point_masks`` (a mask-aware point glimpse)."""
        return self.point_glimpse is not None and self.point_glimpse.masks

    def set_num_classes(self, num_classes: int) -> None:
        """Build the K-way head (once) and then load ``checkpoint_path`` if one was given."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if self.head is not None:
            if num_classes != self.num_classes:
                raise ValueError(f"PointViT already has {self.num_classes} classes, asked for {num_classes}")
            return
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes)
        if self.use_glimpse_head:
            self.glimpse_head = nn.Linear(self.embed_dim, num_classes)
        self.reset_head()
        if self.checkpoint_path:
            self.load_checkpoint(self.checkpoint_path)

    # ------------------------------------------------------------------ parameters / loading
    def train(self, mode: bool = True) -> "PointViT":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def reset_head(self) -> None:
        for head in (self.head, self.glimpse_head):
            if head is not None:
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)

    def _init_sincos_pos_embed(self) -> None:
        be = self.backbone
        if be.pos_embed is None:
            raise ValueError("pos_embed_init='sincos' needs a model with an absolute position embedding")
        gh, gw = be.patch_embed.grid_size
        table = sincos_2d(gh, gw, self.embed_dim)
        with torch.no_grad():
            be.pos_embed[0, self._num_pos_prefix:] = table.to(be.pos_embed.dtype)

    def reset_point_embed(self) -> None:
        if self.point_embed is not None:
            nn.init.normal_(self.point_embed.weight, std=1e-3)

    def load_checkpoint(self, source: str | Path | dict[str, Any], reinit_head: bool | None = None) -> LoadReport:
        """Load a local checkpoint (see ``vitp.classifiers.loading.load_into``); sets ``load_report``."""
        self.load_report = load_into(self, source, self.reinit_head if reinit_head is None else reinit_head,
                                     strict=self.strict_load, allow_unsafe_load=self.allow_unsafe_load)
        return self.load_report

    # ------------------------------------------------------------------ embeddings
    @property
    def _num_pos_prefix(self) -> int:
        be = self.backbone
        return 0 if getattr(be, "no_embed_class", False) else int(be.num_prefix_tokens)

    def _cls_pos(self) -> torch.Tensor | None:
        """The pretrained CLS position embedding ``[D]`` (None when the model has none)."""
        be = self.backbone
        if be.pos_embed is None or be.cls_token is None or self._num_pos_prefix == 0:
            return None
        return be.pos_embed[0, 0]

    @contextmanager
    def fixed_pos_grid(self, gh: int, gw: int) -> Iterator[None]:
        """Use the position grid for ``gh x gw`` patches as a constant inside the block (ONNX export:
        the antialiased bicubic resampling has no ONNX operator; values are identical)."""
        self._fixed_pos = None
        grid = self._pos_grid(gh, gw)
        self._fixed_pos = None if grid is None else grid.detach()
        try:
            yield
        finally:
            self._fixed_pos = None

    def _pos_grid(self, gh: int, gw: int) -> torch.Tensor | None:
        be = self.backbone
        fixed = getattr(self, "_fixed_pos", None)
        if fixed is not None and tuple(fixed.shape[:2]) == (gh, gw):
            return fixed
        if be.pos_embed is None:
            return None
        pe = resample_abs_pos_embed(
            be.pos_embed, new_size=(gh, gw), old_size=be.patch_embed.grid_size,
            num_prefix_tokens=self._num_pos_prefix,
        )
        return pe[0, self._num_pos_prefix:].reshape(gh, gw, -1)

    def prepare_images(
        self, images: torch.Tensor, valid_sizes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop to the valid regions, rescale (``image_size``, aspect kept), pad to the patch size."""
        return prepare_images(images, valid_sizes, self.image_size, self.patch_size)

    def _embed_patches(self, images: torch.Tensor, valid_sizes: torch.Tensor | None):
        be = self.backbone
        x, vs = self.prepare_images(images, valid_sizes)
        B = x.shape[0]
        ph, pw = self.patch_size
        tok = be.patch_embed(x)  # [B, Gh, Gw, D]
        Gh, Gw = tok.shape[1], tok.shape[2]
        grids = torch.stack([(vs[:, 0] + ph - 1) // ph, (vs[:, 1] + pw - 1) // pw], dim=1)
        pos = tok.new_zeros(B, Gh, Gw, tok.shape[-1])
        pos_grids: list[torch.Tensor] = []
        cache: dict[tuple[int, int], torch.Tensor | None] = {}
        for b, (gh, gw) in enumerate(grids.tolist()):
            if (gh, gw) not in cache:
                cache[(gh, gw)] = self._pos_grid(gh, gw)
            g = cache[(gh, gw)]
            if g is not None:
                pos[b, :gh, :gw] = g.to(pos.dtype)
            else:
                g = tok.new_zeros(gh, gw, tok.shape[-1])
            # what a point samples: the position embedding, or the whole input patch token
            pos_grids.append(tok[b, :gh, :gw] + g.to(tok.dtype) if self.point_encoding == "sample_patch" else g)
        rows = torch.arange(Gh, device=x.device)
        cols = torch.arange(Gw, device=x.device)
        patch_mask = (rows[None, :, None] < grids[:, 0, None, None]) & (cols[None, None, :] < grids[:, 1, None, None])
        patches = (tok + pos).reshape(B, Gh * Gw, -1)
        prefix = []
        if getattr(be, "reg_token", None) is not None:
            reg = be.reg_token
            if self._num_pos_prefix:
                start = 1 if be.cls_token is not None else 0
                reg = reg + be.pos_embed[:, start : start + reg.shape[1]]
            prefix.append(reg.expand(B, -1, -1))
        seq = torch.cat(prefix + [patches], dim=1)
        seq = be.norm_pre(be.pos_drop(seq))
        n_prefix = seq.shape[1] - Gh * Gw
        key_mask = torch.cat([patch_mask.new_ones(B, n_prefix), patch_mask.reshape(B, -1)], dim=1)
        return seq, key_mask, (Gh, Gw), grids, vs, pos_grids, x

    def _embed_points(self, points: torch.Tensor, vs: torch.Tensor, grids: torch.Tensor,
                      pos_grids: list[torch.Tensor]) -> torch.Tensor:
        be = self.backbone
        B, P, _ = points.shape
        D = self.embed_dim
        points = points.to(be.pos_embed.dtype)
        if self.point_encoding == "linear":
            tok = self.point_embed(points)
            base = self._cls_pos()
            if base is None and be.cls_token is not None:
                base = be.cls_token[0, 0]
        else:
            ph, pw = self.patch_size
            toks = []
            for b in range(B):
                # pixel position in the rescaled frame -> normalised over the image's patch grid
                ext = torch.stack([grids[b, 0] * ph, grids[b, 1] * pw]).to(points.dtype)
                yx = (points[b] + 1) / 2 * vs[b].to(points.dtype) / ext * 2 - 1
                g = pos_grids[b].permute(2, 0, 1)[None].to(points.dtype)  # [1, D, gh, gw]
                s = F.grid_sample(g, yx.flip(-1)[None, None], mode="bilinear", padding_mode="border",
                                  align_corners=False)
                toks.append(s[0, :, 0].t())
            tok = torch.stack(toks) if toks else points.new_zeros(B, P, D)
            if self.point_offset is not None:
                base = self.point_offset
            else:
                base = be.cls_token[0, 0] if be.cls_token is not None else None
        if base is not None:
            tok = tok + base
        return be.norm_pre(be.pos_drop(tok))

    def _joining_grids(self, seq: torch.Tensor, grid: tuple[int, int], grids: torch.Tensor,
                       pos_grids: list[torch.Tensor]) -> list[torch.Tensor]:
        """With ``sample_patch`` and points joining at block k > 0: per image the patch tokens
        entering block k (``[gh, gw, D]``), which the points sample; otherwise ``pos_grids``."""
        if self.point_encoding != "sample_patch" or self.point_start_block == 0:
            return pos_grids
        Gh, Gw = grid
        patches = seq[:, seq.shape[1] - Gh * Gw:].reshape(seq.shape[0], Gh, Gw, -1)
        return [patches[b, :gh, :gw] for b, (gh, gw) in enumerate(grids.tolist())]

    def _glimpse(self, images: torch.Tensor | None, points: torch.Tensor, vs: torch.Tensor,
                 point_masks: PointMasks | None) -> torch.Tensor | None:
        """The glimpse embedding ``[B, P, D]`` of each point (None without ``point_glimpse``)."""
        if self.point_glimpse is None:
            return None
        if images is None:
            raise ValueError("point_glimpse needs the rescaled input images")
        return self.point_glimpse(images, points, vs, point_masks)

    def _head(self, x: torch.Tensor, glimpse: torch.Tensor | None = None) -> torch.Tensor:
        be = self.backbone
        x = be.norm(x)
        x = getattr(be, "fc_norm", nn.Identity())(x)
        if self.head is None:
            raise RuntimeError("PointViT: num_classes is not set (pass it or call set_num_classes)")
        logits = self.head(x)
        if self.glimpse_head is not None and glimpse is not None:
            logits = logits + self.glimpse_head(glimpse).to(logits.dtype)
        return logits

    # ------------------------------------------------------------------ forward
    def _op(self, name: str):
        """``block_forward`` / ``block_query``, wrapped in ``torch.compile`` when ``compile_blocks`` is set."""
        fn = {"block_forward": block_forward, "block_query": block_query}[name]
        if not self.compile_blocks:
            return fn
        if name not in self._compiled:
            self._compiled[name] = torch.compile(fn, dynamic=True)
        return self._compiled[name]

    @staticmethod
    def _patch_mask(key_mask: torch.Tensor) -> torch.Tensor | None:
        """Attention mask of the patch tokens; None without padding (SDPA's mask-free kernels)."""
        return None if bool(key_mask.all()) else key_mask[:, None, None, :]

    def _patch_blocks(self, seq: torch.Tensor, mask: torch.Tensor | None, stop: int) -> torch.Tensor:
        """Run the patch tokens alone through blocks ``0..stop-1``."""
        fwd = self._op("block_forward")
        for blk in self.backbone.blocks[:stop]:
            seq, _ = fwd(blk, seq, mask)
        return seq

    def encode_patches(self, images: torch.Tensor, valid_sizes: torch.Tensor | None = None) -> PatchCache:
        """Run the patch pass once (``one_way`` mode) and cache the keys / values of the blocks the
        points run (``point_start_block`` on)."""
        if self.attention != "one_way":
            raise RuntimeError("encode_patches / classify_points need attention='one_way'")
        if self.frame == "square":
            from vitp.classifiers.trunk import square_trunk_states

            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
                memo = self._trunk_memo if self.training and self.freeze_backbone else None
                trunk = square_trunk_states(self, images, self.point_start_block, memo)
            return self.cache_from_trunk(trunk, valid_sizes, images.shape[-2:])
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            seq, key_mask, grid, grids, vs, pos_grids, prepared = self._embed_patches(images, valid_sizes)
            k0 = self.point_start_block
            mask = self._patch_mask(key_mask)
            seq = self._patch_blocks(seq, mask, k0)
            pos_grids = self._joining_grids(seq, grid, grids, pos_grids)
            blocks = self.backbone.blocks
            fwd = self._op("block_forward")
            kv = []
            for i in range(k0, len(blocks)):
                if i == len(blocks) - 1:  # the last block's output is never used: keys / values only
                    kv.append(self_slot_kv(*block_kv(blocks[i], seq)))
                    break
                seq, blk_kv = fwd(blocks[i], seq, mask, return_kv=True)
                kv.append(self_slot_kv(*blk_kv))
        return PatchCache(kv=kv, key_mask=key_mask, grid=grid, image_grids=grids, valid_sizes=vs,
                          pos_grids=pos_grids, slot_mask=None if mask is None else self_slot_mask(key_mask),
                          start_block=k0, images=prepared if self.point_glimpse is not None else None)

    def cache_from_trunk(self, trunk: "TrunkStates", valid_sizes: torch.Tensor | None,
                         frame: tuple[int, int]) -> PatchCache:
        """A ``PatchCache`` from trunk states in the square frame (this model's own, or a proposer's
        with equal trunk weights): only the keys / values of blocks ``point_start_block..`` are
        computed here. ``valid_sizes`` / ``frame``: the images' valid regions and the padded size
        of the input batch (the trunk's frame is that batch resized by ``trunk.scale``)."""
        from vitp.classifiers.trunk import cache_from_trunk

        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            return cache_from_trunk(self, trunk, valid_sizes, frame)

    def classify_points(self, cache: PatchCache, points: torch.Tensor,
                        point_masks: PointMasks | None = None) -> torch.Tensor:
        """Logits ``[B, P, K]`` of ``points [B, P, 2]`` from a ``PatchCache`` (chunked over P when
        ``point_chunk_size`` is set and smaller than P); ``point_masks`` for ``point_glimpse_masks``."""
        B, P, _ = points.shape
        if P == 0:
            return points.new_zeros(B, 0, self.num_classes)
        chunk = self.point_chunk_size or P
        query = self._op("block_query")
        blocks = self.backbone.blocks[cache.start_block:]
        out = []
        locality = self.point_locality
        n_prefix = cache.key_mask.shape[1] - cache.grid[0] * cache.grid[1]
        for s in range(0, P, chunk):
            pts = points[:, s : s + chunk]
            x = self._embed_points(pts, cache.valid_sizes, cache.image_grids, cache.pos_grids)
            glimpse = self._glimpse(cache.images, pts, cache.valid_sizes,
                                    None if point_masks is None else point_masks.points(s, s + chunk))
            if glimpse is not None:
                x = x + glimpse.to(x.dtype)
            index = None if locality is None else locality.offset_index(
                pts.float(), cache.valid_sizes, self.patch_size, cache.grid)
            for j, (blk, kv) in enumerate(zip(blocks, cache.kv)):
                mask = cache.slot_mask if index is None else locality.attention_bias(
                    cache.start_block + j, index, cache.key_mask, n_prefix)
                x = query(blk, x, kv, mask)
            out.append(self._head(x, glimpse))
        return torch.cat(out, dim=1)

    def forward(
        self,
        images: torch.Tensor,
        points: torch.Tensor,
        valid_sizes: torch.Tensor | None = None,
        point_mask: torch.Tensor | None = None,
        point_masks: PointMasks | None = None,
    ) -> torch.Tensor:
        """``images [B,3,H,W]``, ``points [B,P,2]`` (y, x in [-1,1] of the valid region),
        ``valid_sizes long[B,2]`` (None = whole frame) -> ``logits [B,P,K]``.

        ``point_mask bool[B,P]`` (``full`` mode only): False hides padding points from the others.
        ``point_masks``: the segment mask of every point, for ``point_glimpse_masks``.
        """
        if valid_sizes is not None and not isinstance(valid_sizes, torch.Tensor):
            valid_sizes = torch.as_tensor(valid_sizes, dtype=torch.long, device=images.device)
        if self.attention == "one_way":
            return self.classify_points(self.encode_patches(images, valid_sizes), points, point_masks)
        B, P, _ = points.shape
        seq, key_mask, grid, grids, vs, pos_grids, prepared = self._embed_patches(images, valid_sizes)
        seq = self._patch_blocks(seq, self._patch_mask(key_mask), self.point_start_block)
        pos_grids = self._joining_grids(seq, grid, grids, pos_grids)
        pts = self._embed_points(points, vs, grids, pos_grids)
        glimpse = self._glimpse(prepared, points, vs, point_masks)
        if glimpse is not None:
            pts = pts + glimpse.to(pts.dtype)
        pmask = torch.ones(B, P, dtype=torch.bool, device=seq.device) if point_mask is None else point_mask.bool()
        x = torch.cat([pts, seq], dim=1)
        mask = torch.cat([pmask, key_mask], dim=1)[:, None, None, :]
        fwd = self._op("block_forward")
        for blk in self.backbone.blocks[self.point_start_block:]:
            x, _ = fwd(blk, x, mask)
        return self._head(x[:, :P], glimpse)
