"""Inference cost of PointViT's second stage against a plain timm ViT forward of the same backbone.

    python scripts/bench_point_vit.py --model vit_small_patch14_dinov2 --sizes 518x518 518x1036

For each image size and number of points P, every variant runs side by side in one process, the
repetitions interleaved (rep 1 of every variant, then rep 2, ...) so load changes hit all alike;
times are medians of CPU time (and of wall time, in brackets). Printed as ratios to the plain timm forward (``timm``: ``model(x)``, num_classes=0):

* ``one_way kK``: ``PointViT`` with fast one-way attention, points joining at block K
  (``point_start_block``); K = 0 is the paper's setting (points run every block).
* ``masked k0``: the previous one-way implementation (keys [patches ; all points] with a P x P
  identity mask, ``tests/reference_attention.py``), on the same cache.
* ``full k0``: reference-style full attention over [points ; patches].

Memory: the peak increase while the call runs. On CUDA ``torch.cuda.max_memory_allocated``; on CPU
the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
resident set before the call, with glibc's mmap threshold pinned (the script re-executes itself with
``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the resident set; an approximation.
Random weights (no download).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from vitp.classifiers import PatchCache, PointViT
from vitp.classifiers.vit_ops import _attn_out, _dropout_p, _mlp_branch, _qkv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_attention import masked_one_way_attention  # noqa: E402  (the tests' reference)

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def reexec_with_malloc_env() -> None:
    """Restart once with glibc malloc returning big blocks to the OS (CPU memory deltas)."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown CPU"


def machine_line(device: str) -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    # the vector instructions torch's CPU kernels use (AVX2, AVX512, ...): bf16 speed follows them
    simd = torch.backends.cpu.get_cpu_capability()
    return (f"CPU {cpu_model()} ({simd}), {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads{gpu}; load average {load} at start")


def interleaved_medians(
    fns: dict[str, Callable[[], object]], reps: int, sync: Callable[[], None]
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per variant as ``(cpu, wall)``: one warm-up each, then repetitions interleaved
    across variants. ``cpu`` is the process's CPU time (``time.process_time``), which other jobs
    on a loaded machine disturb far less than wall time; on CUDA both are wall time."""
    for fn in fns.values():
        fn()
    sync()
    cuda = sync is not _no_sync
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            c, w = time.process_time(), time.perf_counter()
            fn()
            sync()
            w = time.perf_counter() - w
            wall[name].append(w)
            cpu[name].append(w if cuda else time.process_time() - c)
    med = statistics.median
    return {k: med(v) for k, v in cpu.items()}, {k: med(v) for k, v in wall.items()}


def _no_sync() -> None:
    pass


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def peak_memory_mb(fn: Callable[[], object], device: str) -> float | None:
    """Peak memory increase (MiB) during ``fn()``; None when it cannot be measured here."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size
        base = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - base) / 1024
    except OSError:
        return None


def masked_classify(m: PointViT, cache: PatchCache, points: torch.Tensor) -> torch.Tensor:
    """The previous one-way implementation (explicit P x P identity mask), on the same cache."""
    x = m._embed_points(points, cache.valid_sizes, cache.image_grids, cache.pos_grids)
    for blk, (k, v) in zip(m.backbone.blocks[cache.start_block:], cache.kv):
        attn = blk.attn
        n, d = k.shape[2] - 1, attn.head_dim
        h = blk.norm1(x)
        q, ks, vs = _qkv(attn, h)
        o = masked_one_way_attention(q, ks, vs, (k[:, :, :n, :d], v[:, :, :n, :d]), cache.key_mask, _dropout_p(attn))
        x = _mlp_branch(blk, x + blk.drop_path1(blk.ls1(_attn_out(attn, h, o))))
    return m._head(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch14_dinov2")
    parser.add_argument("--sizes", nargs="+", default=["518x518", "518x1036"], help="HxW")
    parser.add_argument("--points", type=int, nargs="*", default=[1, 100, 250, 1000], help="P values of the time table (none: memory table only)")
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 8, 11], help="point_start_block values")
    parser.add_argument("--no-masked", action="store_true", help="skip the previous masked implementation")
    parser.add_argument("--no-full", action="store_true", help="skip full attention")
    parser.add_argument("--memory-points", type=int, nargs="*", default=[1000, 4000],
                        help="P for the memory table (first size only)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--classes", type=int, default=133)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steadier ratios on a shared, loaded machine; 0 = torch default)")
    args = parser.parse_args()
    if args.device == "cpu":
        reexec_with_malloc_env()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else _no_sync
    torch.manual_seed(0)
    import timm

    plain = timm.create_model(args.model, pretrained=False, num_classes=0, dynamic_img_size=True).to(dev).eval()
    ref = PointViT(args.classes, model_name=args.model, image_size=None, point_chunk_size=None).to(dev).eval()
    state = ref.state_dict()

    def variant(**kw) -> PointViT:
        kw.setdefault("point_chunk_size", None)
        m = PointViT(args.classes, model_name=args.model, image_size=None, **kw)
        m.load_state_dict(state)
        return m.to(dev).eval()

    models = {f"one_way k{k}": variant(point_start_block=k) for k in args.starts}
    if not args.no_full:
        models["full k0"] = variant(attention="full")
    print(f"`{' '.join(['python', *sys.argv])}`")
    print(f"{args.model}, {len(ref.backbone.blocks)} blocks, device {dev}; {machine_line(dev)}\n")
    names = ["timm"] + (["masked k0"] if not args.no_masked else []) + list(models)
    print("Each cell: CPU-time ratio (wall-time ratio in brackets); timm column: CPU / wall ms.\n")
    print("| size | P | timm (ms) | " + " | ".join(f"{n} / timm" for n in names[1:]) + " |")
    print("|---|---:|---:|" + "---:|" * (len(names) - 1))
    with torch.inference_mode():
        for size in args.sizes:
            H, W = (int(s) for s in size.split("x"))
            image = torch.randn(1, 3, H, W, device=dev)
            valid = torch.tensor([[H, W]], device=dev)
            for p in args.points:
                points = torch.rand(1, p, 2, device=dev) * 2 - 1
                fns: dict[str, Callable[[], object]] = {"timm": lambda: plain(image)}
                if not args.no_masked:
                    k0 = models["one_way k0"] if "one_way k0" in models else variant()
                    fns["masked k0"] = lambda m=k0: masked_classify(m, m.encode_patches(image, valid), points)
                for name, m in models.items():
                    fns[name] = lambda m=m: m(image, points, valid)
                t, w = interleaved_medians(fns, args.reps, sync)
                ratios = " | ".join(f"{t[n] / t['timm']:.2f} ({w[n] / w['timm']:.2f})" for n in names[1:])
                print(f"| {H}x{W} | {p} | {t['timm'] * 1000:.0f} / {w['timm'] * 1000:.0f} | {ratios} |", flush=True)
        if args.memory_points:
            H, W = (int(s) for s in args.sizes[0].split("x"))
            image = torch.randn(1, 3, H, W, device=dev)
            valid = torch.tensor([[H, W]], device=dev)
            what = "max_memory_allocated" if dev.startswith("cuda") else "peak RSS increase, approximate"
            print(f"\nPeak memory during one call at {H}x{W} (MiB, {what}):\n")
            mem_names = ["timm"] + (["masked k0"] if not args.no_masked else []) + list(models) + ["one_way k0 chunk 1024"]
            print("| P | " + " | ".join(mem_names) + " |")
            print("|---:|" + "---:|" * len(mem_names))
            chunked = variant(point_chunk_size=1024)
            for p in args.memory_points:
                points = torch.rand(1, p, 2, device=dev) * 2 - 1
                fns = {"timm": lambda: plain(image)}
                if not args.no_masked:
                    k0 = models.get("one_way k0") or variant()
                    fns["masked k0"] = lambda m=k0: masked_classify(m, m.encode_patches(image, valid), points)
                for name, m in models.items():
                    fns[name] = lambda m=m: m(image, points, valid)
                fns["one_way k0 chunk 1024"] = lambda: chunked(image, points, valid)
                mem = {n: peak_memory_mb(fn, dev) for n, fn in fns.items()}
                print(f"| {p} | " + " | ".join("n/m" if mem[n] is None else f"{mem[n]:.0f}" for n in mem_names) + " |",
                      flush=True)
    print(f"\nload average at end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
