"""Data-loading throughput of the training pipeline against the model's consumption rate, measured
in one process.

    python scripts/bench_data_loading.py --workers 0 1 2 --batches 6

Loader: ``vitp.data.CocoPanopticDataModule`` on the generated dataset (``data/generated/synthetic_coco``,
created on first use) with the training settings of ``configs/synthetic/vitp/tiny_oracle_masks.yaml``
(batch 16, crop 256, scale jitter 0.75-1.5, 128 class-balanced points per image): images/s over
``--batches`` batches after the first (the first batch, which includes worker start-up, is reported
separately).

Model: one training step (forward, point cross-entropy, backward, AdamW) of that config's PointViT
on a batch of the same shape, images/s (median of ``--reps``). Ratio > 1: the loader outruns the model.
On a small shared CPU the loader workers and the training step compete for the same cores during
real training; this measures each alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_point_vit import machine_line  # noqa: E402

from vitp.classifiers import PointViT  # noqa: E402
from vitp.data import CocoPanopticDataModule  # noqa: E402
from vitp.points import ClassBalancedSampler  # noqa: E402

TINY = dict(model_name="vit_tiny_patch16_224", image_size=192, attention="one_way", point_encoding="sample_pos_embed",
            pos_embed_init="sincos", model_kwargs={"depth": 4, "embed_dim": 128, "num_heads": 4, "img_size": 192})


def make_datamodule(workers: int, batch: int) -> CocoPanopticDataModule:
    return CocoPanopticDataModule(root=None, batch_size=batch, num_workers=workers, image_size=256,
                                  scale_range=(0.75, 1.5), point_sampler=ClassBalancedSampler(num_points=128))


def loader_rate(workers: int, batch: int, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s over the next ``batches`` batches)."""
    dm = make_datamodule(workers, batch)
    dm.setup("fit")
    start = time.perf_counter()
    it = iter(dm.train_dataloader())
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it))
    rate = n / (time.perf_counter() - start)
    del it
    return first, rate


def model_rate(batch: int, reps: int, start_block: int) -> float:
    dm = make_datamodule(0, batch)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    m = PointViT(dm.num_classes, point_start_block=start_block, **TINY).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05)
    valid = b.valid_tensor()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = m(b.images, b.points, valid)
        F.cross_entropy(logits.flatten(0, 1), b.point_labels.flatten(), ignore_index=-1).backward()
        opt.step()

    step()
    times = []
    for _ in range(reps):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"`{' '.join(['python', *sys.argv])}`")
    print(f"{machine_line('cpu')}\n")
    rate_model = {k: model_rate(args.batch, args.reps, k) for k in (0, 2)}
    print("| loader workers | first batch (s) | loader (images/s) | loader / model k0 | loader / model k2 |")
    print("|---:|---:|---:|---:|---:|")
    for w in args.workers:
        first, rate = loader_rate(w, args.batch, args.batches)
        print(f"| {w} | {first:.1f} | {rate:.1f} | {rate / rate_model[0]:.2f} | {rate / rate_model[2]:.2f} |",
              flush=True)
    print(f"\nmodel training step (tiny_oracle_masks PointViT, batch {args.batch}, 128 points): "
          f"{rate_model[0]:.1f} images/s (point_start_block 0), {rate_model[2]:.1f} images/s (point_start_block 2)")
    print(f"load average at end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
