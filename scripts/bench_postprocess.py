"""Post-processing alone at photo sizes: the current implementation against the previous one (issue 25).

The default run's proposals and ViT-P class probabilities for ``--images`` validation images
(computed once), then each image's post-processing seen at its original size times each
``--scales`` value (the real mask logits, read at a photo-like size: 256 px x 2.5 = 640 px), timed
for ``vitp.postprocess`` and ``tests/reference_postprocess_bands.py`` (the code before; results
bit-identical, checked here), panoptic alone and all three tasks; interleaved, medians of the
process CPU time, 1 thread.

    python scripts/bench_postprocess.py --workdir /tmp/sa_s0 --data-root /tmp/data_default
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from bench_end_to_end import CONFIG, load_run  # noqa: E402
from bench_point_vit import machine_line  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--proposer", type=Path, default=None)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.5, 5.0])
    parser.add_argument("--reps", type=int, default=3)
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(1)
    import reference_postprocess_bands as previous  # noqa: E402

    from vitp import postprocess as current
    from vitp.proposal_geometry import _crop_args

    seg, batches = load_run(args, [], overrides)
    pipe = seg.module.eval().pipeline
    cases = []
    with torch.inference_mode():
        for b in batches:
            props = pipe.propose(b, "panoptic")
            probs = pipe.variant_probs(props, pipe.classify(b, [props])[0][0], ("vitp",))["vitp"][0]
            cases.append((b, props, probs))
    keys = ("object_mask_threshold", "overlap_threshold", "topk_instances", "keep_rule", "keep_threshold")

    def run(module: object, b: object, props: object, probs: torch.Tensor, size: tuple[int, int], tasks: tuple) -> object:
        config = module.PostProcessConfig(**{k: getattr(pipe.config, k) for k in keys})
        logits = module.crop_logits(props.mask_logits[0], *_crop_args(props, b, 0, size))
        return module.infer(logits, probs, pipe.is_thing, tasks, config)

    rows = []
    with torch.inference_mode():
        for scale in args.scales:
            for tasks in (("panoptic",), ("panoptic", "semantic", "instance")):
                times: dict[str, list[float]] = {"previous": [], "current": []}
                for rep in range(args.reps):
                    for name, module in (("previous", previous), ("current", current))[:: 1 if rep % 2 == 0 else -1]:
                        total = 0.0
                        for b, props, probs in cases:
                            size = tuple(round(s * scale) for s in b.targets[0].orig_size)
                            start = time.process_time()
                            out = run(module, b, props, probs, size, tasks)
                            total += time.process_time() - start
                            if rep == 0 and name == "current":
                                ref = run(previous, b, props, probs, size, tasks)
                                assert torch.equal(out.panoptic.segments, ref.panoptic.segments), "results differ"
                        times[name].append(total / len(cases))
                prev, cur = (statistics.median(times[k]) for k in ("previous", "current"))
                side = round(max(batches[0].targets[0].orig_size) * scale)
                rows.append((scale, side, "+".join(tasks), 1000 * prev, 1000 * cur, cur / prev))
    print(f"{len(cases)} val images, post-processing of the ViT-P probabilities; {machine_line('cpu')}\n")
    print("| scale | long side | tasks | previous (ms / image, CPU) | current | current / previous |")
    print("|---:|---:|---|---:|---:|---:|")
    for scale, side, tasks, prev, cur, ratio in rows:
        print(f"| {scale:g} | {side} | {tasks} | {prev:.1f} | {cur:.1f} | {ratio:.2f} |")
    return {"rows": rows}


if __name__ == "__main__":
    main()
