"""Inference cost of PointViT against the number of query points: `one_way` (patch pass once,
points as cheap queries over cached keys/values) vs `full` (points join the self-attention).

    python scripts/bench_point_vit.py --model vit_small_patch14_dinov2 --size 518

Random weights (no download); times are medians over repetitions, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitp.classifiers import PointViT


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch14_dinov2")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--points", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    image = torch.randn(1, 3, args.size, args.size, device=args.device)
    valid = torch.tensor([[args.size, args.size]], device=args.device)
    models = {mode: PointViT(133, model_name=args.model, image_size=args.size, attention=mode).to(args.device).eval()
              for mode in ("one_way", "full")}
    with torch.no_grad():
        base = median_time(lambda: models["one_way"].encode_patches(image, valid), args.reps)
        print(f"{args.model} at {args.size}px on {args.device}; patch pass alone: {base * 1000:.0f} ms")
        print("| points | one_way (ms) | full (ms) | full / one_way | one_way / patch pass |")
        print("|---:|---:|---:|---:|---:|")
        for p in args.points:
            points = torch.rand(1, p, 2, device=args.device) * 2 - 1
            t = {mode: median_time(lambda m=m: m(image, points, valid), args.reps) for mode, m in models.items()}
            print(f"| {p} | {t['one_way'] * 1000:.0f} | {t['full'] * 1000:.0f} | "
                  f"{t['full'] / t['one_way']:.2f} | {t['one_way'] / base:.2f} |")


if __name__ == "__main__":
    main()
