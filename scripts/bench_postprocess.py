"""Post-processing alone at photo sizes: the current implementation against the previous one (issue 25).

The default run's proposals and ViT-P class probabilities for ``--images`` validation images
(computed once), then each image's post-processing seen at its original size times each
``--scales`` value (the real mask logits, read at a photo-like size: 256 px x 2.5 = 640 px), timed
for ``vitp.postprocess`` and ``tests/reference_postprocess_bands.py`` (the code before; results
bit-identical, checked here), panoptic alone and all three tasks; interleaved, medians of the
process CPU time, 1 thread.

    python scripts/bench_postprocess.py --workdir /tmp/sa_s0 --data-root /tmp/data_default

``--previous-rev REV`` times the post-processing of a git revision of this checkout instead
(``src/vitp/postprocess.py``, ``postprocess_parts.py``, ``upsampling.py`` and ``rule_out.py`` as they
were at REV, loaded from ``git show``). ``--classes 133`` spreads the run's class probabilities over COCO's number of classes
(the semantic task's cost grows with them); ``--tasks`` picks the task sets timed.
"""

from __future__ import annotations

import argparse
import importlib.util
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
sys.path.insert(0, str(ROOT / "tests"))
from bench_end_to_end import CONFIG, load_run  # noqa: E402
from bench_point_vit import machine_line  # noqa: E402


def load_revision(rev: str) -> ModuleType:
    """``vitp.postprocess`` as it was at git revision ``rev`` (with that revision's ``upsampling``,
    ``rule_out`` and ``postprocess_parts``)."""
    folder = Path(tempfile.mkdtemp(prefix="vitp_previous_"))
    modules = {}
    for name in ("upsampling", "rule_out", "postprocess_parts", "postprocess"):
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/vitp/{name}.py"],
                               capture_output=True, text=True)
        if shown.returncode != 0 and name in ("rule_out", "postprocess_parts"):
            continue  # revisions before these modules were split out of postprocess.py
        shown.check_returncode()
        text = shown.stdout
        for dependency in ("upsampling", "rule_out", "postprocess_parts"):
            text = text.replace(f"from vitp.{dependency} import", f"from _previous_{dependency} import")
        modules[name] = import_previous(folder, name, text)
    return modules["postprocess"]


def import_previous(folder: Path, name: str, text: str) -> ModuleType:
    """Module source ``text`` (a revision's ``vitp/<name>.py``) imported as ``_previous_<name>`` from a
    file in ``folder`` (registered in ``sys.modules``, so other previous modules can import it)."""
    path = folder / f"_previous_{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"_previous_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def same_results(a: object, b: object) -> bool:
    """Equal maps, segments, labels and instance masks; instance scores to float rounding."""
    if (a.semantic is None) != (b.semantic is None) or (a.semantic is not None and not torch.equal(a.semantic, b.semantic)):
        return False
    if (a.panoptic is None) != (b.panoptic is None):
        return False
    if a.panoptic is not None and not all(torch.equal(getattr(a.panoptic, f), getattr(b.panoptic, f))
                                          for f in ("segments", "labels", "scores")):
        return False
    if a.instance is None or b.instance is None:
        return a.instance is None and b.instance is None
    return (torch.equal(a.instance.masks, b.instance.masks) and torch.equal(a.instance.labels, b.instance.labels)
            and torch.allclose(a.instance.scores, b.instance.scores, rtol=1e-5, atol=1e-7))


def _spread_columns(k: int, classes: int) -> torch.Tensor:
    """The fixed columns the run's ``k`` classes take among ``classes`` (``--classes``)."""
    return torch.randperm(classes, generator=torch.Generator().manual_seed(0))[:k]


def spread_probs(probs: torch.Tensor, classes: int, seed: int) -> torch.Tensor:
    """Class probabilities ``[Q, K + 1]`` spread over ``classes`` columns: each real class in its
    column with 98 % of its mass, 2 % of each query's object mass over all columns (a long tail)."""
    k = probs.shape[1] - 1
    tail = (torch.randn(len(probs), classes, generator=torch.Generator().manual_seed(seed)) * 2).softmax(-1) * 0.02
    out = torch.zeros(len(probs), classes + 1)
    out[:, :classes] = tail * (1 - probs[:, -1:])
    out[:, _spread_columns(k, classes)] += probs[:, :k] * 0.98
    out[:, classes] = probs[:, -1]
    return out


def spread_is_thing(is_thing: torch.Tensor, classes: int) -> torch.Tensor:
    """``is_thing`` of the run's classes in their :func:`spread_probs` columns (the others stuff)."""
    out = torch.zeros(classes, dtype=torch.bool)
    out[_spread_columns(len(is_thing), classes)] = is_thing.cpu()
    return out


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
    parser.add_argument("--classes", type=int, default=None,
                        help="spread the run's class probabilities over this many classes (e.g. 133, COCO's): "
                             "each real class goes to a fixed random column and 2 %% of each query's mass "
                             "to the others, a long tail as a COCO model gives (masks stay the run's)")
    parser.add_argument("--tasks", nargs="+", default=["panoptic", "semantic", "panoptic+semantic+instance"],
                        help="task sets timed, '+'-joined")
    parser.add_argument("--previous-rev", default=None, help="git revision whose post-processing is 'previous' "
                        "(default: tests/reference_postprocess_bands.py)")
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(1)
    if args.previous_rev:
        previous = load_revision(args.previous_rev)
    else:
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
            if args.classes:
                probs = spread_probs(probs, args.classes, len(cases))
            cases.append((b, props, probs))
    is_thing = pipe.is_thing if not args.classes else spread_is_thing(pipe.is_thing, args.classes)
    keys = ("object_mask_threshold", "overlap_threshold", "topk_instances", "keep_rule", "keep_threshold")

    def run(module: object, b: object, props: object, probs: torch.Tensor, size: tuple[int, int], tasks: tuple) -> object:
        config = module.PostProcessConfig(**{k: getattr(pipe.config, k) for k in keys})
        logits = module.crop_logits(props.mask_logits[0], *_crop_args(props, b, 0, size))
        return module.infer(logits, probs, is_thing, tasks, config)

    rows = []
    with torch.inference_mode():
        for scale in args.scales:
            for tasks in (tuple(t.split("+")) for t in args.tasks):
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
                                assert same_results(out, ref), "results differ"
                        times[name].append(total / len(cases))
                prev, cur = (statistics.median(times[k]) for k in ("previous", "current"))
                side = round(max(batches[0].targets[0].orig_size) * scale)
                rows.append((scale, side, "+".join(tasks), 1000 * prev, 1000 * cur, cur / prev))
    spread = f", spread over {args.classes} classes" if args.classes else ""
    print(f"{len(cases)} val images, post-processing of the ViT-P probabilities{spread}; {machine_line('cpu')}\n")
    print("| scale | long side | tasks | previous (ms / image, CPU) | current | current / previous |")
    print("|---:|---:|---|---:|---:|---:|")
    for scale, side, tasks, prev, cur, ratio in rows:
        print(f"| {scale:g} | {side} | {tasks} | {prev:.1f} | {cur:.1f} | {ratio:.2f} |")
    return {"rows": rows}


if __name__ == "__main__":
    main()
