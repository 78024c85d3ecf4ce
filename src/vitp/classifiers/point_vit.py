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

Beside it: the tokens and the patch pass (``point_tokens.py``), attention kernels and image
preparation (``vit_ops.py``), the conv stem (``stems.py``), the locality bias (``locality.py``), the
glimpse (``glimpse.py``), the square-frame trunk (``trunk.py``) and checkpoint loading (``loading.py``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

import timm
import torch
from torch import nn

from vitp.classifiers.base import PointClassifier
from vitp.classifiers.glimpse import GlimpseSettings, PointGlimpse
from vitp.classifiers.locality import PointLocalityBias
from vitp.classifiers.loading import LoadReport, load_into
from vitp.classifiers.point_tokens import (PatchCache, embed_patches, embed_points, full_attention, num_pos_prefix,
                                          patch_pass, pos_grid, query_points, sincos_2d)
from vitp.classifiers.stems import DEFAULT_WIDTH, patch_projection
from vitp.structures import PointMasks, TrunkStates
from vitp.view_memo import ViewMemo
from vitp.classifiers.vit_ops import check_backbone, prepare_images

class PointViT(PointClassifier):
    """Point classifier: timm ViT + one token per query point + linear head (``logits [B, P, K]``).

    Args:
        num_classes: the number of outputs C. Leave it None under ``ViTPModule``, which sets it with
            :meth:`set_num_classes` (the data's K classes, +1 "no object" with ``ProposalPoints``); the
            head and ``checkpoint_path`` wait for it.
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
        stem_width: channels of the conv stem's first convolution (doubling per stride-2 step, at
            most the embedding width); ``stem="conv"`` only. Its cost grows with its square.
        point_locality_radius: R; with ``one_way`` attention, add a learned relative-position bias
            to the points' attention over patches within R patches of the point (Gaussian priors
            of several widths per head; see ``vitp.classifiers.locality``). None = off (the paper).
        glimpse: add to each point token a small CNN embedding of a pixel window of the (rescaled)
            input image around the point, zero at init (``vitp.classifiers.glimpse``): the outline of
            objects smaller than a patch, optionally read from the point's segment mask. None = off
            (the paper).
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

    def __init__(  # long: it checks every argument against the others, with a clear error each
        self,
        num_classes: int | None = None,
        model_name: str = "vit_base_patch14_dinov2",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        image_size: int | None = 518,
        attention: Literal["one_way", "full"] = "one_way",
        point_encoding: Literal["linear", "sample_pos_embed", "sample_patch"] = "linear",
        drop_path_rate: float = 0.0,
        point_chunk_size: int | None = 1024,
        model_kwargs: dict[str, Any] | None = None,
        pos_embed_init: Literal["timm", "sincos"] = "timm",
        point_start_block: int = 0,
        stem: Literal["patch", "conv"] = "patch",
        stem_width: int = DEFAULT_WIDTH,
        point_locality_radius: int | None = None,
        glimpse: GlimpseSettings | None = None,
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
        check_backbone(be, model_name)
        self.num_classes: int | None = None
        self.image_size = image_size
        self.attention = attention
        self.point_encoding = point_encoding
        self.point_chunk_size = point_chunk_size
        depth = len(be.blocks)
        if not 0 <= int(point_start_block) < depth:
            raise ValueError(f"point_start_block must be in [0, {depth - 1}] for {depth} blocks, got {point_start_block}")
        self.point_start_block = int(point_start_block)
        self.compile_blocks = bool(compile_blocks)
        self._compiled: dict[str, Any] = {}
        self.embed_dim = int(be.embed_dim)
        self.patch_size = tuple(int(p) for p in be.patch_embed.patch_size)
        projection = patch_projection(stem, self.patch_size[0], self.embed_dim, stem_width)
        if projection is not None:  # same output shape and weight names outside patch_embed.proj
            be.patch_embed.proj = projection
        self.point_embed = nn.Linear(2, self.embed_dim, bias=False) if point_encoding == "linear" else None
        self.point_offset = nn.Parameter(torch.zeros(self.embed_dim)) if point_encoding == "sample_patch" else None
        self.point_locality: PointLocalityBias | None = None
        if point_locality_radius is not None:
            if attention != "one_way":
                raise ValueError("point_locality_radius needs attention='one_way'")
            self.point_locality = PointLocalityBias(depth, int(be.blocks[0].attn.num_heads), point_locality_radius)
        self.use_glimpse_head = glimpse is not None and glimpse.head
        self.glimpse_head: nn.Linear | None = None
        self.point_glimpse = None if glimpse is None else PointGlimpse(
            glimpse.window, self.embed_dim, samples=glimpse.samples, masks=glimpse.masks, fit_box=glimpse.fit_box)
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
        if frame == "square" and (attention != "one_way" or image_size is None or glimpse is not None):
            raise ValueError("frame='square' needs attention='one_way', an image_size and no glimpse")
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

    def set_num_classes(self, num_classes: int, reinit_heads: bool = False) -> None:
        """Build the C-way head (once) and then load ``checkpoint_path`` if one was given; a checkpoint
        head of another size is re-initialised with ``reinit_heads``, refused otherwise."""
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
            self.load_checkpoint(self.checkpoint_path, reinit_head=reinit_heads)

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
            be.pos_embed[0, num_pos_prefix(self):] = table.to(be.pos_embed.dtype)

    def reset_point_embed(self) -> None:
        if self.point_embed is not None:
            nn.init.normal_(self.point_embed.weight, std=1e-3)

    def load_checkpoint(self, source: str | Path | dict[str, Any], reinit_head: bool = False) -> LoadReport:
        """Load a local checkpoint (see ``vitp.classifiers.loading.load_into``; ``reinit_head``: a head of
        another size is re-initialised instead of refused); sets ``load_report``."""
        self.load_report = load_into(self, source, reinit_head,
                                     strict=self.strict_load, allow_unsafe_load=self.allow_unsafe_load)
        return self.load_report

    # ------------------------------------------------------------------ embeddings
    @contextmanager
    def fixed_pos_grid(self, gh: int, gw: int) -> Iterator[None]:
        """Use the position grid for ``gh x gw`` patches as a constant inside the block (ONNX export:
        the antialiased bicubic resampling has no ONNX operator; values are identical)."""
        self._fixed_pos = None
        grid = pos_grid(self, gh, gw)
        self._fixed_pos = None if grid is None else grid.detach()
        try:
            yield
        finally:
            self._fixed_pos = None

    def _embed_patches(self, images: torch.Tensor, valid_sizes: torch.Tensor | None):
        """Patch tokens and their grids (``vitp.classifiers.point_tokens.embed_patches``)."""
        return embed_patches(self, images, valid_sizes)

    def _embed_points(self, points: torch.Tensor, vs: torch.Tensor, grids: torch.Tensor,
                      pos_grids: list[torch.Tensor]) -> torch.Tensor:
        """Point tokens (``vitp.classifiers.point_tokens.embed_points``)."""
        return embed_points(self, points, vs, grids, pos_grids)

    def prepare_images(
        self, images: torch.Tensor, valid_sizes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop to the valid regions, rescale (``image_size``, aspect kept), pad to the patch size."""
        return prepare_images(images, valid_sizes, self.image_size, self.patch_size)

    def _glimpse(self, images: torch.Tensor | None, points: torch.Tensor, vs: torch.Tensor,
                 point_masks: PointMasks | None) -> torch.Tensor | None:
        """The glimpse embedding ``[B, P, D]`` of each point (None without a glimpse)."""
        if self.point_glimpse is None:
            return None
        if images is None:
            raise ValueError("the glimpse needs the rescaled input images")
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
        return patch_pass(self, images, valid_sizes)

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
        ``point_chunk_size`` is set and smaller than P); ``point_masks`` for a mask-aware glimpse."""
        return query_points(self, cache, points, point_masks)

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
        ``point_masks``: the segment mask of every point, for a mask-aware glimpse (``glimpse.masks``).
        """
        if valid_sizes is not None and not isinstance(valid_sizes, torch.Tensor):
            valid_sizes = torch.as_tensor(valid_sizes, dtype=torch.long, device=images.device)
        if self.attention == "one_way":
            return self.classify_points(self.encode_patches(images, valid_sizes), points, point_masks)
        return full_attention(self, images, points, valid_sizes, point_mask, point_masks)
