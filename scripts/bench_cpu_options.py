"""CPU inference options on the default run, side by side (issue 25): threads, bf16 autocast,
``channels_last``, ``torch.compile``.

Loads the trained default run like ``scripts/bench_end_to_end.py`` (``vitp.Segmenter.from_checkpoint``)
and times the full ViT-P path (``pipeline(batch, variants=("vitp",))``: proposer, PointViT, fusion,
post-processing) per validation image under each option, interleaved per image, medians of the
process CPU time and of the wall time over the repetitions. Each option's panoptic maps are compared
with the fp32 baseline's (share of pixels with the same segment class).

    python scripts/bench_cpu_options.py --workdir /tmp/sa_s0 --data-root /tmp/data_default [--compile]

Options (``--compile`` adds the last one; its compilation time is printed apart):

* ``fp32, 1 thread`` (the baseline) and ``fp32, 2 threads`` (``torch.set_num_threads``);
* ``bf16 autocast``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the call, 1 thread;
* ``channels_last``: the proposer's model and the images in ``torch.channels_last``, 1 thread;
* ``torch.compile``: the proposer's Hugging Face model (``proposer.hf``) and the PointViT blocks
  (``compile_blocks``) compiled (1 thread).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_end_to_end import CHECKPOINT, CONFIG, interleaved_totals, load_run  # noqa: E402
from bench_point_vit import machine_line  # noqa: E402


def same_classes(a: object, b: object) -> float:
    """Share of pixels whose panoptic segment has the same class (void = -1) in both predictions."""
    def classes(p: object) -> torch.Tensor:
        pan = p.panoptic
        lut = torch.cat([pan.labels.long(), pan.labels.new_tensor([-1]).long()])
        return lut[pan.segments.long()]
    return float((classes(a) == classes(b)).float().mean())


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="the trained default run's directory")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--ckpt", type=Path, default=None, help=f"default: WORKDIR/{CHECKPOINT}")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--proposer", type=Path, default=None, help="the saved proposer (default: the config's)")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compilation on a CPU)")
    args, overrides = parser.parse_known_args(argv)
    seg, batches = load_run(args, ["--model.init_args.tasks", "[panoptic]"], overrides)
    pipe = seg.module.eval().pipeline

    def call(p: object, threads: int = 1, autocast: bool = False, channels_last: bool = False) -> Callable:
        def run(b: object) -> object:
            torch.set_num_threads(threads)
            if channels_last:
                b.images = b.images.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with ctx:
                return p(b, variants=("vitp",)).predictions["vitp"][0]
        return run

    last = copy.copy(pipe)
    last.proposer = copy.deepcopy(pipe.proposer).to(memory_format=torch.channels_last)
    options: dict[str, Callable] = {
        "fp32, 1 thread": call(pipe), "fp32, 2 threads": call(pipe, threads=2),
        "bf16 autocast": call(pipe, autocast=True), "channels_last": call(last, channels_last=True),
    }
    compile_seconds = None
    if args.compile:
        compiled = copy.copy(pipe)
        compiled.proposer = copy.deepcopy(pipe.proposer)
        compiled.proposer.hf = torch.compile(compiled.proposer.hf)
        compiled.classifier = copy.deepcopy(pipe.classifier)
        compiled.classifier.compile_blocks = True
        options["torch.compile"] = call(compiled)
        start = time.perf_counter()
        with torch.inference_mode():
            options["torch.compile"](batches[0])
        compile_seconds = time.perf_counter() - start

    agreement: dict[str, list[float]] = {name: [] for name in options}
    with torch.inference_mode():
        for b in batches:
            base = options["fp32, 1 thread"](copy.copy(b))
            for name, fn in options.items():
                agreement[name].append(same_classes(base, fn(copy.copy(b))))
        machine = machine_line("cpu")
        fns = [{name: (lambda fn=fn, b=b: fn(copy.copy(b))) for name, fn in options.items()} for b in batches]
        cpu, wall = interleaved_totals(fns, args.reps)
    torch.set_num_threads(1)
    n = len(batches)
    print(f"{n} val images, ViT-P path (panoptic), {args.reps} interleaved repetitions (medians); {machine}\n")
    print("| option | ms / image (CPU) | ms / image (wall) | CPU / baseline | wall / baseline | same class as fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = "fp32, 1 thread"
    for name in options:
        print(f"| {name} | {1000 * cpu[name] / n:.1f} | {1000 * wall[name] / n:.1f} | {cpu[name] / cpu[ref]:.2f} | "
              f"{wall[name] / wall[ref]:.2f} | {100 * sum(agreement[name]) / n:.2f} % |")
    if compile_seconds is not None:
        print(f"\ntorch.compile: first call (compilation) {compile_seconds:.0f} s")
    return {"cpu": cpu, "wall": wall}


if __name__ == "__main__":
    main()
