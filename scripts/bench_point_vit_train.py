"""Training step time of PointViT against the plain timm ViT classification step, same backbone,
batch and image size, measured side by side in one process (repetitions interleaved, medians of CPU and wall time).

    python scripts/bench_point_vit_train.py --model vit_small_patch14_dinov2 --size 518 --batch 2 --points 200

* ``timm``: ``timm.create_model(model, num_classes=K)``: forward, cross-entropy on the image label,
  backward, SGD (momentum 0.9) step.
* ``one_way kK`` / ``full k0``: ``PointViT`` with ``points`` sampled points per image (the paper
  trains on 100-250), cross-entropy over all points, backward, the same optimiser step.

Printed as ratios to ``timm``, plus the peak memory increase of one step (see ``bench_point_vit``).
Random weights (no download).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_point_vit import (  # noqa: E402
    _no_sync,
    interleaved_medians,
    machine_line,
    peak_memory_mb,
    reexec_with_malloc_env,
)

from vitp.classifiers import PointViT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch14_dinov2")
    parser.add_argument("--size", default="518x518", help="HxW")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 8])
    parser.add_argument("--no-full", action="store_true")
    parser.add_argument("--classes", type=int, default=133)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.device == "cpu":
        reexec_with_malloc_env()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else _no_sync
    import timm

    torch.manual_seed(0)
    H, W = (int(s) for s in args.size.split("x"))
    B, P, K = args.batch, args.points, args.classes
    images = torch.randn(B, 3, H, W, device=dev)
    valid = torch.tensor([[H, W]] * B, device=dev)
    labels = torch.randint(0, K, (B,), device=dev)
    points = torch.rand(B, P, 2, device=dev) * 2 - 1
    point_labels = torch.randint(0, K, (B, P), device=dev)

    def step_fn(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()

        return step

    plain = timm.create_model(args.model, pretrained=False, num_classes=K, dynamic_img_size=True).to(dev).train()
    fns = {"timm": step_fn(plain, lambda: F.cross_entropy(plain(images), labels))}
    variants = {f"one_way k{k}": dict(point_start_block=k) for k in args.starts}
    if not args.no_full:
        variants["full k0"] = dict(attention="full")
    for name, kw in variants.items():
        torch.manual_seed(0)
        m = PointViT(K, model_name=args.model, image_size=None, point_chunk_size=None, **kw).to(dev).train()
        fns[name] = step_fn(m, lambda m=m: F.cross_entropy(m(images, points, valid).flatten(0, 1), point_labels.flatten()))
    print(f"`{' '.join(['python', *sys.argv])}`")
    print(f"{args.model}, batch {B} x {H}x{W}, {P} points per image, device {dev}; {machine_line(dev)}\n")
    t, w = interleaved_medians(fns, args.reps, sync)
    mem = {n: peak_memory_mb(fn, dev) for n, fn in fns.items()}
    names = list(fns)
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    print("| step CPU time (ms) | " + " | ".join(f"{t[n] * 1000:.0f}" for n in names) + " |")
    print("| step CPU time / timm | " + " | ".join(f"{t[n] / t['timm']:.2f}" for n in names) + " |")
    print("| step wall time / timm | " + " | ".join(f"{w[n] / w['timm']:.2f}" for n in names) + " |")
    print("| peak memory increase (MiB) | " + " | ".join("n/m" if mem[n] is None else f"{mem[n]:.0f}" for n in names) + " |")
    print(f"\nload average at end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
