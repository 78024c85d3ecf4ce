"""The point classifier's inputs on the ViT-P path, current code against a git revision (issue 25).

Times, per test image of a trained default run, the two steps ``TwoStagePipeline.classify`` runs
before the network: the inference points (``proposal_geometry.select_points``) and the point masks
(``proposal_geometry.proposal_point_masks``, each proposal binarised and cut to its part under its
point). ``--previous-rev`` loads that revision's ``vitp/proposal_geometry.py`` beside the current one
(its other imports resolve to the current package), both get the same proposals and the same upsampled
logits, their outputs are checked equal, and the repetitions alternate the order. Reported: medians of
the process CPU time per image. The end-to-end benchmark (``bench_end_to_end.py``) cannot resolve a
millisecond on a machine whose speed drifts by more within a run; this can.

    python scripts/bench_point_inputs.py --workdir /tmp/sa_s0 \\
        --data-root /tmp/sa_s0/data/generated/synthetic_coco --ckpt <last.ckpt> --previous-rev 8c5cba3

Arguments after ``--`` go to ``vitp`` as overrides.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_end_to_end import CONFIG, load_run  # noqa: E402
from bench_postprocess import import_previous  # noqa: E402
from bench_point_vit import machine_line  # noqa: E402

import vitp.proposal_geometry as current  # noqa: E402


def load_revision(rev: str) -> ModuleType:
    """``vitp.proposal_geometry`` as it was at git revision ``rev``."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/vitp/proposal_geometry.py"],
                          capture_output=True, text=True, check=True).stdout
    return import_previous(Path(tempfile.mkdtemp(prefix="vitp_previous_")), "proposal_geometry", text)


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []  # to vitp, as in bench_end_to_end.py
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT, help="the trained run's directory")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--proposer", type=Path, default=None, help="the proposer saved with save_pretrained")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--previous-rev", required=True, help="git revision whose proposal_geometry is 'previous'")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    previous = load_revision(args.previous_rev)
    segmenter, batches = load_run(args, ["--model.init_args.tasks", "[panoptic]"], overrides)
    pipe = segmenter.module.eval().pipeline
    k = pipe.settings.top_k

    def points(module: ModuleType, batch, props) -> torch.Tensor:
        frame = tuple(batch.images.shape[-2:])
        found = module.select_points(props.mask_logits, batch.valid_tensor(), frame, k, props.valid_sizes)
        return found.reshape(len(batch), -1, 2)

    def masks(module: ModuleType, batch, props, pts, regions):
        return module.proposal_point_masks(batch, [props], [pts], k, pipe.settings.point_mask_components, regions)

    with torch.inference_mode():
        proposals = [pipe.propose(batch, "panoptic") for batch in batches]
        chosen = [points(current, b, p) for b, p in zip(batches, proposals)]
        # the valid-region logits the pipeline upsamples once for the masks and the post-processing
        regions = [pipe._regions(b, [p], pipe.logit_views(b, [p]), [None]) for b, p in zip(batches, proposals)]
        for b, p, pts, r in zip(batches, proposals, chosen, regions):
            if not torch.equal(points(previous, b, p), pts):
                raise SystemExit("the inference points differ from the previous revision's")
            a, c = masks(previous, b, p, pts, r), masks(current, b, p, pts, r)
            if not (torch.equal(a.index, c.index) and all(torch.equal(x, y) for x, y in zip(a.masks, c.masks))):
                raise SystemExit("the point masks differ from the previous revision's")
        times: dict[str, list[float]] = {f"{step} {code}": [] for step in ("points", "masks") for code in ("previous", "current")}
        for rep in range(args.reps):
            for code, module in (("previous", previous), ("current", current))[:: 1 if rep % 2 == 0 else -1]:
                start = time.process_time()
                for b, p in zip(batches, proposals):
                    points(module, b, p)
                times[f"points {code}"].append(time.process_time() - start)
                start = time.process_time()
                for b, p, pts, r in zip(batches, proposals, chosen, regions):
                    masks(module, b, p, pts, r)
                times[f"masks {code}"].append(time.process_time() - start)
    n = len(batches)
    print(f"{n} images, {args.reps} interleaved repetitions (medians), outputs equal; {machine_line('cpu')}\n")
    print(f"| step | previous ({args.previous_rev}), ms / image | current | current / previous |")
    print("|---|---:|---:|---:|")
    medians = {name: 1000 * statistics.median(values) / n for name, values in times.items()}
    for step in ("points", "masks"):
        prev, cur = medians[f"{step} previous"], medians[f"{step} current"]
        print(f"| {step} | {prev:.2f} | {cur:.2f} | {cur / prev:.2f} |")
    return medians


if __name__ == "__main__":
    main()
