"""The GPU check (issue 25): one script, a few minutes, for a session that is lent a GPU.

1. **default pipeline**: the default run (``make demo``'s stage-1 Mask2Former + stage-2 ViT-P, loaded
   with ``vitp.Segmenter.from_checkpoint``) over the test images, batch of ``--batch`` images, under
   ``torch.autocast(dtype=bf16)``: images/s and peak GPU memory. Skipped when the run is missing.
2. **ViT-B/14 at 518 px**: a randomly initialised DINOv2-B-sized ``PointViT`` (``vit_base_patch14_dinov2``,
   no download) classifying ``--points`` points per image, bf16 autocast: images/s, peak memory and
   MFU, i.e. the model FLOPs per second (patch pass + point queries, counted analytically:
   ``2 * multiply-adds`` of every matmul) over the device's dense bf16 peak (``--peak-tflops``;
   known: H100 / H200 989 TFLOP/s).

CI does not run it (no GPU); ``tests/test_bench_scripts.py`` (the ViT part) and
``tests/test_predict_api.py`` (the pipeline part, bf16 autocast) run it on the CPU at a tiny size so it
cannot rot. Usage on the lent machine, after ``make demo``:

    python scripts/gpu_check.py --device cuda                 # both parts, ~2-4 minutes
    python scripts/gpu_check.py --device cuda --skip-pipeline --vit-batch 16
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_point_vit import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml"
CHECKPOINT = Path("outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def vit_flops(depth: int, dim: int, tokens: int, points: int, start: int = 0, mlp_ratio: float = 4.0) -> float:
    """FLOPs (2 x multiply-adds) of a ViT patch pass over ``tokens`` tokens plus ``points`` one-way
    point queries from block ``start`` (each reading the ``tokens`` keys / values and its own)."""
    per_token = 2 * (4 * dim * dim + 2 * mlp_ratio * dim * dim)  # qkv + proj, MLP
    patch = depth * (tokens * per_token + 2 * 2 * tokens * tokens * dim)  # + QK^T and AV
    query = (depth - start) * points * (per_token + 2 * 2 * (tokens + 1) * dim)
    return float(patch + query)


def default_pipeline(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, float] | None:
    ckpt = (args.workdir / CHECKPOINT).resolve()
    if not ckpt.is_file():
        print(f"default pipeline: skipped ({ckpt} missing: run `make demo` first)")
        return None
    from vitp import Segmenter

    old = os.getcwd()
    os.chdir(args.workdir)
    try:
        seg = Segmenter.from_checkpoint(ckpt, config=CONFIG, batch_size=args.batch,
                                        overrides=["--trainer.enable_progress_bar", "false", *args.overrides])
        dataset = seg.datamodule.build_dataset("test")
        n = min(args.images, len(dataset))
        batches = [seg.collate([dataset[j] for j in range(i, min(i + args.batch, n))]) for i in range(0, n, args.batch)]
    finally:
        os.chdir(old)
    module = seg.module.to(args.device).eval()
    batches = [b.to(args.device) for b in batches]
    with torch.inference_mode(), torch.autocast(args.device.split(":")[0], dtype=dtype):
        module.predict_batch(batches[0])  # warm-up
        sync(args.device)
        reset_peak(args.device)
        start = time.perf_counter()
        for b in batches:
            module.predict_batch(b)
        sync(args.device)
        seconds = time.perf_counter() - start
    result = {"images_per_s": n / seconds, "peak_gb": peak_memory_gb(args.device)}
    print(f"default pipeline: {n} images, batch {args.batch}: {result['images_per_s']:.1f} img/s, "
          f"peak memory {result['peak_gb'] or 0:.2f} GB")
    return result


def vit_b(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, float]:
    from vitp.classifiers import PointViT

    kwargs = dict(args.vit_kwargs)
    model = PointViT(133, model_name=args.vit_model, image_size=args.vit_size, model_kwargs=kwargs or None,
                     point_chunk_size=None).to(args.device).eval()
    be = model.backbone
    side = args.vit_size
    images = torch.randn(args.vit_batch, 3, side, side, device=args.device)
    points = torch.rand(args.vit_batch, args.points, 2, device=args.device) * 2 - 1
    with torch.inference_mode(), torch.autocast(args.device.split(":")[0], dtype=dtype):
        for _ in range(2):
            model(images, points)
        sync(args.device)
        reset_peak(args.device)
        start = time.perf_counter()
        for _ in range(args.vit_reps):
            model(images, points)
        sync(args.device)
        seconds = (time.perf_counter() - start) / args.vit_reps
    grid = (side // model.patch_size[0]) * (side // model.patch_size[1])
    tokens = grid + int(getattr(be, "num_prefix_tokens", 0)) - (1 if be.cls_token is not None else 0)
    flops = args.vit_batch * vit_flops(len(be.blocks), model.embed_dim, tokens, args.points)
    peak = args.peak_tflops
    if peak is None and args.device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    result = {"images_per_s": args.vit_batch / seconds, "tflops": flops / seconds / 1e12,
              "peak_gb": peak_memory_gb(args.device), "mfu": None if peak is None else flops / seconds / 1e12 / peak}
    mfu = "n/a (pass --peak-tflops)" if result["mfu"] is None else f"{100 * result['mfu']:.1f} %"
    print(f"{args.vit_model} at {side} px, {args.points} points/image, batch {args.vit_batch}: "
          f"{result['images_per_s']:.1f} img/s, {result['tflops']:.2f} TFLOP/s, MFU {mfu}, "
          f"peak memory {result['peak_gb'] or 0:.2f} GB")
    return result


def main(argv: list[str] | None = None) -> dict[str, dict[str, float] | None]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--workdir", type=Path, default=ROOT, help="where `make demo` wrote outputs/")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--vit-model", default="vit_base_patch14_dinov2")
    parser.add_argument("--vit-size", type=int, default=518)
    parser.add_argument("--vit-batch", type=int, default=8)
    parser.add_argument("--vit-reps", type=int, default=10)
    parser.add_argument("--vit-kwargs", type=lambda s: dict(ast.literal_eval(s)), default={},
                        help="timm kwargs of the ViT, e.g. \"{'depth': 2, 'embed_dim': 64, 'num_heads': 2, 'img_size': 56}\"")
    parser.add_argument("--points", type=int, default=100, help="points per image (one per proposal)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    args = parser.parse_args(argv)
    args.overrides = overrides
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --device cpu for a dry run)")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(machine_line(args.device), f"dtype {args.dtype}")
    return {"pipeline": None if args.skip_pipeline else default_pipeline(args, dtype), "vit": vit_b(args, dtype)}


if __name__ == "__main__":
    main()
