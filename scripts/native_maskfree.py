"""Native segmentation without masks (issue 10, item 5).

Train the NativeBackbone (SeNaTra-style grouping backbone) on the generated dataset with image-level
labels only: mean-pool the final group tokens -> LayerNorm -> Linear -> BCE-with-logits against the
multi-hot set of classes present in the image (every segment's class, crowd included). No mask
supervision of any kind. Then measure how well the hard partition of its groups (argmax of the
assignment chain; final stride-32 groups and the stride-16 level) follows the ground-truth panoptic
segments of the generated *val* split, against:

* a uniform grid with the same cell size (stride 32 / 16: as many cells as the level has groups
  over the image) -- exactly what strided-conv downsampling gives;
* a uniform grid with as many cells as the partition it is compared to actually *uses* on that
  image ("matched grid", per image: ``rows x cols`` closest to the number of segments, aspect
  kept). A grouping level may leave groups empty (argmax over a near-uniform distribution), so
  its segment count can be far below the cell count; this row tells whether its segments are
  better placed than grid cells at the same count;
* the same backbone untrained (random init of the same seed), as a control.

Metrics (``vitp.metrics.superpixel``): achievable segmentation accuracy (ASA, void excluded),
boundary recall within ``--tolerance`` px, the fraction of pixels on a predicted boundary and the
number of segments per image (both to read recall against). Mean over val images per seed, then
mean +- std over seeds. Nothing is tuned on the val split: the recipe is fixed in the arguments.

    nice -n 19 .venv/bin/python scripts/native_maskfree.py --seeds 0 1 2 --epochs 1 --num-train 200 \
        --num-val 50 --image-size 128 --preset small --workdir outputs/native_maskfree \
        --figure docs/native_maskfree.png

Opt-in backbone options against the collapse of the dense (final) grouping layer (defaults off):
``--dense-locality BETA`` (learned locality prior ``-beta |offset|^2`` in the dense layer's logits,
so it starts near the grid) and ``--learn-tau`` (learned, clamped log logit scale in every grouping
layer); see ``vitp.backbones.native_grouping.SpatialGrouping`` and docs/native.md.

Opt-in label-free auxiliary term (default off, uses no annotation of any kind): ``--recon-weight W``
adds ``W`` times a reconstruction loss (``reconstruction_loss``): each stride-4 token's colour (the
mean of its 4x4 pixels) is rebuilt from the group colours carried back through the assignment chain
(soft masks), an L1 error; it rewards colour-homogeneous groups. ``--recon-levels`` picks the levels
it is applied to. ``--data-seed`` generates a different dataset (a dev split to choose settings on).

Writes ``WORKDIR/seed{S}/backbone.pt`` (+ ``arch.json``; loadable by ``scripts/native_hierarchy.py``),
``WORKDIR/results.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitp.backbones.hierarchy import hierarchy_maps, render_segments
from vitp.backbones.native import NATIVE_PRESETS, NativeBackbone, NativeOutput
from vitp.data import CocoPanopticDataModule
from vitp.data.synthetic import ensure_synthetic_dataset
from vitp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitp.metrics.superpixel import (
    achievable_segmentation_accuracy,
    boundary_fraction,
    boundary_recall,
    grid_partition,
    num_segments,
)

LEVELS = {3: 32, 2: 16}  # level -> stride of its groups
METRICS = ("asa", "br", "bfrac", "nseg")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matched_grid(height: int, width: int, n: int) -> np.ndarray:
    """A uniform grid of about ``n`` cells on a ``height x width`` map, cells as square as possible."""
    rows = min(height, max(1, round(math.sqrt(n * height / width))))
    cols = min(width, max(1, round(n / rows)))
    return grid_partition(height, width, rows, cols)


class ImageLevelClassifier(nn.Module):
    """NativeBackbone + mean of the final group tokens -> LayerNorm -> Linear (K logits)."""

    def __init__(self, preset: str, num_classes: int, **backbone_options) -> None:
        super().__init__()
        self.backbone = NativeBackbone.from_preset(preset, **backbone_options)
        d = self.backbone.dims[-1]
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, images: torch.Tensor, return_output: bool = False):
        """Class logits ``float[B, K]``; with ``return_output`` also the backbone's ``NativeOutput``."""
        out = self.backbone(images)
        logits = self.head(self.norm(out.tokens.mean(1)))
        return (logits, out) if return_output else logits


def token_colours(images: torch.Tensor, out: NativeOutput) -> torch.Tensor:
    """``float[B, N_4, 3]``: mean (normalised) colour of each stride-4 token's 4x4 pixels, on the
    backbone's 32-padded frame."""
    hp, wp = out.padded_size
    padded = F.pad(images, (0, wp - images.shape[-1], 0, hp - images.shape[-2]))
    return F.avg_pool2d(padded, 4).flatten(2).transpose(1, 2)


def token_valid(out: NativeOutput, valid_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """``float[B, N_4]``: 1 for stride-4 tokens whose top-left pixel lies in the image's valid
    (unpadded) region, else 0."""
    h4, w4 = out.assignments[0].in_size
    ys, xs = torch.arange(h4) * 4, torch.arange(w4) * 4
    rows = [((ys[:, None] < vh) & (xs[None, :] < vw)).flatten() for vh, vw in valid_sizes]
    return torch.stack(rows).float()


def reconstruction_loss(out: NativeOutput, images: torch.Tensor, valid: torch.Tensor | None = None,
                        levels: tuple[int, ...] = (3,)) -> torch.Tensor:
    """Label-free reconstruction loss (no annotation used), mean over ``levels``.

    For a level's chain ``M float[B, N_4, G]`` (each token's distribution over the groups), every
    group's colour is the ``M``-weighted mean of the token colours (``token_colours``), and each
    token is rebuilt as ``M @ group colours``; the loss is the mean L1 error over valid tokens and
    channels. Low when groups are colour-homogeneous and assignments sharp, so it pulls group
    boundaries onto colour edges. ``valid float[B, N_4]`` (default: all tokens) masks the padding.
    """
    f = token_colours(images, out)
    if valid is None:
        valid = torch.ones(f.shape[:2], dtype=f.dtype, device=f.device)
    total = f.new_zeros(())
    for level in levels:
        m = out.chain(level)  # [B, N_4, G]
        w = m * valid[..., None]
        centres = w.transpose(1, 2) @ f / (w.sum(1)[..., None] + 1e-6)  # [B, G, 3]
        err = (m @ centres - f).abs().mean(-1)  # [B, N_4]
        total = total + (err * valid).sum() / valid.sum().clamp(min=1)
    return total / len(levels)


def multi_hot(targets, k: int) -> torch.Tensor:
    y = torch.zeros(len(targets), k)
    for i, t in enumerate(targets):
        y[i, t.labels.long()] = 1.0
    return y


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model: ImageLevelClassifier, dm: CocoPanopticDataModule, epochs: int, lr: float, seed: int,
          log_every: int = 20, recon_weight: float = 0.0, recon_levels: tuple[int, ...] = (3,)) -> dict:
    """Image-level BCE (+ ``recon_weight`` x ``reconstruction_loss`` when > 0); AdamW, warmup + cosine."""
    seed_all(seed)
    loader = dm.train_dataloader()
    steps = epochs * len(loader)
    warmup = min(20, steps // 5)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    def factor(s: int) -> float:  # linear warmup, cosine decay to 0
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    k = model.head.out_features
    model.train()
    t0, step, losses, recons = time.perf_counter(), 0, [], []
    for epoch in range(epochs):
        for batch in loader:
            logits, out = model(batch.images, return_output=True)
            loss = F.binary_cross_entropy_with_logits(logits, multi_hot(batch.targets, k))
            if recon_weight > 0:
                valid = token_valid(out, [t.valid_size for t in batch.targets])
                recon = reconstruction_loss(out, batch.images, valid, recon_levels)
                recons.append(recon.item())
                loss = loss + recon_weight * recon
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if step % log_every == 0 or step == steps:
                print(f"  seed {seed} epoch {epoch} step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    info = {"steps": steps, "wall_s": time.perf_counter() - t0, "final_loss": float(np.mean(losses[-len(loader):]))}
    if recons:
        info["final_recon"] = float(np.mean(recons[-len(loader):]))
    return info


def to_uint8(image: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image.cpu() * std + mean).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()


def _fit(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop / nearest-resize a predicted map (valid region) to the GT's original size."""
    if pred.shape == tuple(size):
        return pred
    t = torch.from_numpy(pred)[None, None].float()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].long().numpy()


def _scores(pred: np.ndarray, gt: np.ndarray, tol: int) -> dict:
    return {"asa": achievable_segmentation_accuracy(pred, gt), "br": boundary_recall(pred, gt, tol),
            "bfrac": boundary_fraction(pred), "nseg": num_segments(pred)}


@torch.no_grad()
def evaluate(backbone: NativeBackbone | None, dm: CocoPanopticDataModule, tol: int, keep_panels: int = 0):
    """Per-level mean metrics over the val split: ``{level: {metric: value}}``; ``backbone=None``
    evaluates the uniform grid. With a backbone, ``{"matched": {level: {metric: value}}}`` is added:
    the matched grid (as many cells as the level uses on each image). Also returns up to
    ``keep_panels`` (image, gt, {level: pred})."""
    if backbone is not None:
        backbone.eval()
    sums = {lv: {m: [] for m in METRICS} for lv in LEVELS}
    matched = {lv: {m: [] for m in METRICS} for lv in LEVELS}
    panels = []
    for batch in dm.val_dataloader():
        maps = hierarchy_maps(backbone(batch.images), tuple(LEVELS)) if backbone is not None else None
        for i, t in enumerate(batch.targets):
            gt = t.segments.numpy()
            vh, vw = t.valid_size
            preds = {}
            for lv, stride in LEVELS.items():
                if maps is None:
                    pred = grid_partition(vh, vw, math.ceil(vh / stride), math.ceil(vw / stride))
                else:
                    pred = maps[lv][i, :vh, :vw].numpy()
                pred = _fit(pred, gt.shape)
                preds[lv] = pred
                for m, v in _scores(pred, gt, tol).items():
                    sums[lv][m].append(v)
                if maps is not None:
                    ref = matched_grid(*gt.shape, num_segments(pred))
                    for m, v in _scores(ref, gt, tol).items():
                        matched[lv][m].append(v)
            if len(panels) < keep_panels:
                panels.append((_fit_image(to_uint8(batch.images[i][:, :vh, :vw]), gt.shape), gt, preds))
    means = {lv: {m: float(np.nanmean(v)) for m, v in d.items()} for lv, d in sums.items()}
    if backbone is not None:
        means["matched"] = {lv: {m: float(np.nanmean(v)) for m, v in d.items()} for lv, d in matched.items()}
    return means, panels


def _fit_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == tuple(size):
        return img
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).byte().numpy()


def save_figure(path: Path, learned, grid, random_init) -> None:
    from vitp.visualize import figure

    panels = []
    for (img, gt, pl), (_, _, pg), (_, _, pr) in zip(learned, grid, random_init):
        panels += [("image", img), ("ground truth", render_segments(img, gt, seed=1)),
                   ("grid 32 px", render_segments(img, pg[3])),
                   ("learned, final", render_segments(img, pl[3])),
                   ("learned, stride 16", render_segments(img, pl[2])),
                   ("random init, final", render_segments(img, pr[3]))]
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(panels, columns=6, title_size=11).save(path)


def fmt(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def table(results: dict, learned_name: str = "learned (image labels only)") -> str:
    rows = ["| partition | level | ASA | boundary recall | boundary px fraction | segments / image |",
            "|---|---|---|---|---|---|"]
    names = {"learned": learned_name, "random": "random init (control)",
             "grid": "uniform grid, same cell count", "matched": "uniform grid, as many cells as learned uses"}
    for level, stride in LEVELS.items():
        for name in ("learned", "random", "grid", "matched"):
            per_seed = results[name]
            cells = [fmt([r[str(level)][m] for r in per_seed], 3 if m != "nseg" else 1) for m in METRICS]
            rows.append(f"| {names[name]} | stride {stride} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--workdir", type=Path, default=Path("outputs/native_maskfree"))
    p.add_argument("--root", type=Path, default=None, help="dataset root (default: WORKDIR/data, generated)")
    p.add_argument("--num-train", type=int, default=200, help="generated train images (when generating)")
    p.add_argument("--num-val", type=int, default=50, help="generated val images (when generating)")
    p.add_argument("--preset", default="small", choices=sorted(NATIVE_PRESETS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tolerance", type=int, default=2, help="boundary recall tolerance (px)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--figure", type=Path, default=None, help="picture from the first seed's model")
    p.add_argument("--dense-locality", type=float, default=0.0,
                   help="opt-in: initial strength of the learned locality prior in the dense grouping layer")
    p.add_argument("--learn-tau", action="store_true", help="opt-in: learned, clamped log logit scale")
    p.add_argument("--recon-weight", type=float, default=0.0,
                   help="opt-in: weight of the label-free colour reconstruction loss (0 = off)")
    p.add_argument("--recon-levels", type=int, nargs="+", default=[3], choices=[1, 2, 3],
                   help="grouping levels the reconstruction loss is applied to")
    p.add_argument("--data-seed", type=int, default=0, help="generation seed (when generating the data)")
    args = p.parse_args(argv)
    options = {"dense_locality": args.dense_locality, "learn_tau": args.learn_tau}

    torch.set_num_threads(args.threads)
    root = args.root or ensure_synthetic_dataset(args.workdir / "data", num_train=args.num_train,
                                                  num_val=args.num_val, image_size=args.image_size,
                                                  seed=args.data_seed)
    dm = CocoPanopticDataModule(root=str(root), image_size=args.image_size, batch_size=args.batch_size,
                                eval_batch_size=16, num_workers=0, scale_range=(0.75, 1.5))
    dm.setup("fit")
    k = dm.num_classes
    print(f"data {root}: {len(dm.train_dataset)} train / {len(dm.val_dataset)} val images, {k} classes; "
          f"torch {torch.__version__}, {args.threads} threads, {cpu_model()}")

    grid, grid_panels = evaluate(None, dm, args.tolerance, keep_panels=3)
    results = {"learned": [], "random": [], "grid": [{str(lv): v for lv, v in grid.items()}], "matched": [],
               "train": [], "cpu": cpu_model(), "torch": torch.__version__}
    for si, seed in enumerate(args.seeds):
        seed_all(seed)
        model = ImageLevelClassifier(args.preset, k, **options)
        rand, rand_panels = evaluate(model.backbone, dm, args.tolerance, keep_panels=3 if si == 0 else 0)
        info = train(model, dm, args.epochs, args.lr, seed, recon_weight=args.recon_weight,
                     recon_levels=tuple(args.recon_levels))
        learned, learned_panels = evaluate(model.backbone, dm, args.tolerance, keep_panels=3 if si == 0 else 0)
        out = args.workdir / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.backbone.state_dict(), out / "backbone.pt")
        (out / "arch.json").write_text(json.dumps({"preset": args.preset, **NATIVE_PRESETS[args.preset], **options}))
        rand.pop("matched")
        results["random"].append({str(lv): v for lv, v in rand.items()})
        results["matched"].append({str(lv): v for lv, v in learned.pop("matched").items()})
        results["learned"].append({str(lv): v for lv, v in learned.items()})
        results["train"].append({"seed": seed, **info})
        print(f"seed {seed}: {info['steps']} steps in {info['wall_s']:.0f} s, final loss {info['final_loss']:.4f}; "
              f"learned final ASA {learned[3]['asa']:.3f} BR {learned[3]['br']:.3f} | random ASA "
              f"{rand[3]['asa']:.3f} BR {rand[3]['br']:.3f} | grid ASA {grid[3]['asa']:.3f} BR {grid[3]['br']:.3f}",
              flush=True)
        if si == 0 and args.figure is not None:
            save_figure(args.figure, learned_panels, grid_panels, rand_panels)
            print(f"wrote {args.figure}")
    results["args"] = {k_: str(v) for k_, v in vars(args).items()}
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))
    print()
    name = ("learned (no masks; image labels + label-free reconstruction)" if args.recon_weight > 0
            else "learned (image labels only)")
    print(table(results, name))


if __name__ == "__main__":
    main()
