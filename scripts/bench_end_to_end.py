"""End-to-end inference images/s: the proposer alone against proposer + ViT-P (issue 12).

Loads a trained default run (stage 1: the Mask2Former proposer saved with ``save_pretrained``;
stage 2: the ViT-P Lightning checkpoint) through ``vitp.Segmenter.from_checkpoint`` (the model
``vitp test`` / ``vitp predict`` build) and times, per validation image (batch of 1, data loading
excluded), the package's single inference path ``ViTPModule.pipeline`` (``TwoStagePipeline``):

* ``proposer``: proposer forward + the proposer's own post-processing (variant ``proposer``);
* ``vitp``: proposer forward + PointViT classification of its proposals + class fusion +
  post-processing (variant ``vitp``, what ``vitp predict`` runs);
* ``propose``: the proposer forward alone (to split the proposer's cost);
* ``pointvit``: the classifier call of the pipeline alone (``TwoStagePipeline.classify``: inference
  points of the proposals + PointViT), on the proposals computed once beforehand;
* ``... every proposal``: ``vitp`` / ``pointvit`` with ``InferenceSettings.skip_empty_proposals`` off,
  so the empty proposals are classified too (as before issue 25's seventh pass);
* ``post proposer`` / ``post vitp``: the pipeline with the proposer's output (and the classifier's
  logits) replayed from a cache: what remains is the class fusion (``vitp``) and the post-processing,
  whose cost grows with the number of segments kept (printed per variant);
* ``... all candidates``: the same with ``InferenceSettings.rule_out_candidates`` off, so every
  panoptic candidate the keep rule lets through is post-processed at full size (on outputs of at
  least ``postprocess_parts.LOCAL_MIN_ELEMENTS`` candidate-pixels; smaller ones take one whole-image pass
  either way; the results are equal, the counts are printed);
* ``... previous``: the post-processing before the running-maximum argmax and the local competition
  (``tests/reference_postprocess_bands.py``, bit-identical results) on the same proposals and class
  probabilities, beside ``... current`` (the package's, called the same way): ``post ...`` alone and
  ``vitp previous`` end to end (proposer + classifier + that post-processing);
* ``vitp separate`` (only for a proposer that shares its trunk, ``EomtProposer(share_trunk_from=k)``):
  ``vitp`` with the proposer's trunk states not handed over, so the classifier runs its own patch pass;
* ``timm``: a plain timm forward of the classifier's own backbone (``backbone(x)``, no points) on
  the image the classifier sees (same resize, ``PointViT.prepare_images``).

With ``--large`` a randomly initialised ViT-S/14-sized PointViT at 518 px (as in
``scripts/bench_point_vit.py``; no download) replaces the trained classifier on top of the same
proposer and proposals: ``vitp L``, ``pointvit L``, ``timm L`` (one per ``--large-starts`` value).

Every variant runs side by side in one process, the repetitions interleaved at the image level
(image 1: every variant, image 2: every variant, ...; the variant order rotates per repetition), so
load changes hit all alike. Reported: images/s from the median over repetitions of the summed
process CPU time (``time.process_time``, which other jobs on a loaded machine disturb far less
than wall time) and of the summed wall time, and ratios of CPU times (wall-time ratios in brackets).

    python scripts/bench_end_to_end.py                   # the run `make demo` wrote in this checkout
    python scripts/bench_end_to_end.py --workdir /tmp/fresh --large
    python scripts/bench_end_to_end.py \\
        --proposer /tmp/fresh/outputs/synthetic/proposer_mask2former/hf_model \\
        --ckpt /tmp/fresh/outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt \\
        --data-root /tmp/fresh/data/generated/synthetic_coco

Arguments after ``--`` go to ``vitp`` as overrides (e.g. ``-- --model.init_args.inference.top_k 5``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_point_vit import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml"
CHECKPOINT = Path("outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt")
PROPOSER = Path("outputs/synthetic/proposer_mask2former/hf_model")


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def interleaved_totals(
    fns_per_image: list[dict[str, Callable[[], object]]], reps: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median over ``reps`` of the summed seconds over images, per variant, as ``(cpu, wall)``.

    One warm-up call of every variant on the first image, then per repetition every image in turn
    and, per image, every variant (order rotated by one each repetition)."""
    names = list(fns_per_image[0])
    for fn in fns_per_image[0].values():
        fn()
    cpu = {n: [0.0] * reps for n in names}
    wall = {n: [0.0] * reps for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for fns in fns_per_image:
            for name in order:
                c, w = time.process_time(), time.perf_counter()
                fns[name]()
                wall[name][r] += time.perf_counter() - w
                cpu[name][r] += time.process_time() - c
    med = statistics.median
    return {n: med(v) for n, v in cpu.items()}, {n: med(v) for n, v in wall.items()}


def load_run(args: argparse.Namespace, extra: list[str], overrides: list[str]) -> tuple[object, list]:
    """The trained run (``args.workdir``, ``.config``, ``.ckpt``, ``.proposer``, ``.data_root``) as
    ``vitp test`` builds it, and its first ``args.images`` test batches (batch of 1)."""
    from vitp import Segmenter

    extra = [*extra, "--trainer.enable_progress_bar", "false"]
    if args.data_root is not None:
        extra += ["--data.init_args.root", str(args.data_root.resolve())]
    if args.proposer is not None:
        extra += ["--model.init_args.proposer.init_args.model", str(args.proposer.resolve())]
    old = os.getcwd()
    os.chdir(args.workdir)
    try:
        seg = Segmenter.from_checkpoint((args.ckpt or args.workdir / CHECKPOINT).resolve(), config=args.config.resolve(),
                                        overrides=[*extra, *overrides], batch_size=1)
        dataset = seg.datamodule.build_dataset("test")
        return seg, [seg.collate([dataset[i]]) for i in range(min(args.images, len(dataset)))]
    finally:
        os.chdir(old)


def large_classifier(num_outputs: int, model: str, size: int, start: int) -> torch.nn.Module:
    """A randomly initialised PointViT of ``model`` at ``size`` px (no download)."""
    from vitp.classifiers import PointViT

    return PointViT(num_outputs, model_name=model, image_size=size, point_start_block=start).eval()


def replay(pipe: object, proposals: object, point_logits: object | None) -> object:
    """A copy of the pipeline whose proposer and classifier return cached outputs (``point_logits``:
    those of the proposals the pipeline classifies, the present ones when it skips empty proposals)."""
    p = copy.copy(pipe)
    p.propose = lambda batch, task: proposals
    p.classify = lambda batch, proposals, *args, **kwargs: ([point_logits], None)
    return p


def post_only(module: object, pipe: object, batch: object, proposals: object, point_logits: torch.Tensor | None,
              variant: str) -> list:
    """``variant``'s class probabilities, then ``module``'s ``crop_logits`` + ``infer`` per image (the
    pipeline's post-processing, with the implementation chosen)."""
    from vitp.proposal_geometry import _crop_args

    probs = pipe.variant_probs(proposals, point_logits, (variant,))[variant]
    config = module.PostProcessConfig(**{f: getattr(pipe.config, f) for f in ("object_mask_threshold",
                                         "overlap_threshold", "topk_instances", "keep_rule", "keep_threshold")})
    out = []
    for i, target in enumerate(batch.targets):
        logits = module.crop_logits(proposals.mask_logits[i], *_crop_args(proposals, batch, i, tuple(target.orig_size)))
        out.append(module.infer(logits, probs[i], pipe.is_thing, pipe.tasks, config))
    return out


def panoptic_candidates(pipe: object, batch: object, proposals: object, point_logits: torch.Tensor) -> dict:
    """Per variant, ``(kept by the keep rule, left after the mask-resolution rule-out)`` for image 0."""
    from vitp.postprocess import _Panoptic
    from vitp.proposal_geometry import capped_size, lazy_logits

    target = batch.targets[0]
    logits = lazy_logits(proposals, batch, 0, capped_size(tuple(target.orig_size), None))
    out = {}
    for name, probs in pipe.variant_probs(proposals, point_logits, ("proposer", "vitp")).items():
        every = dataclasses.replace(pipe.config, rule_out=False)
        out[name] = tuple(len(_Panoptic(logits, probs[0], pipe.is_thing, c).queries) for c in (every, pipe.config))
    return out


def count_segments(pred: object, task: str) -> int | None:
    if task == "panoptic":
        return len(pred.panoptic.labels)
    if task == "instance":
        return len(pred.instance.labels)
    return None


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT,
                        help="directory of the run; relative paths (config's proposer, default data) resolve here "
                             "(e.g. /tmp/fresh for a run made in a fresh clone there)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the ViT-P training config")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help=f"ViT-P Lightning checkpoint (default: WORKDIR/{CHECKPOINT}; e.g. "
                             f"/tmp/fresh/{CHECKPOINT})")
    parser.add_argument("--proposer", type=Path, default=None,
                        help=f"the proposer saved with save_pretrained (default: the config's, {PROPOSER} under "
                             f"WORKDIR; e.g. /tmp/fresh/{PROPOSER})")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="dataset root (default: the config's, the generated dataset under "
                             "WORKDIR/data/generated/synthetic_coco; e.g. /tmp/fresh/data/generated/synthetic_coco)")
    parser.add_argument("--task", default="panoptic", choices=["panoptic", "semantic", "instance"],
                        help="the one task post-processed")
    parser.add_argument("--images", type=int, default=50, help="first N images of the test split (val)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=None, metavar="VARIANT",
                        help="time only these variants (e.g. proposer vitp 'vitp every proposal': more repetitions "
                             "in the same time, for a steadier ratio)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steadier ratios on a shared, loaded machine; 0 = torch default)")
    parser.add_argument("--large", action="store_true",
                        help="also a random ViT-S/14-sized PointViT (--large-model, --large-size) on the proposals")
    parser.add_argument("--large-model", default="vit_small_patch14_dinov2")
    parser.add_argument("--large-size", type=int, default=518, help="its image_size (long side)")
    parser.add_argument("--large-starts", type=int, nargs="+", default=[0], help="its point_start_block values")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from vitp import Segmenter

    config, workdir = args.config.resolve(), args.workdir.resolve()
    ckpt = (args.ckpt or workdir / CHECKPOINT).resolve()
    extra = ["--model.init_args.tasks", f"[{args.task}]", "--trainer.enable_progress_bar", "false"]
    if args.proposer is not None:
        extra += ["--model.init_args.proposer.init_args.model", str(args.proposer.resolve())]
    if args.data_root is not None:
        extra += ["--data.init_args.root", str(args.data_root.resolve())]
    old = os.getcwd()
    os.chdir(workdir)
    try:
        seg = Segmenter.from_checkpoint(ckpt, config=config, overrides=[*extra, *overrides], batch_size=1)
        dataset = seg.datamodule.build_dataset("test")
        collate = seg.collate
        batches = [collate([dataset[i]]) for i in range(min(args.images, len(dataset)))]
    finally:
        os.chdir(old)
    module = seg.module.eval()
    pipe = module.pipeline
    if module.classifier is None or "proposer" not in module.variant_names:
        raise SystemExit("needs a ViT-P checkpoint with a classifier and a proposer that has its own classes")
    clf = module.classifier
    backbone = clf.backbone
    task = args.task
    k_out = module.dataset_info.num_classes + int(pipe.point_no_object)

    large: dict[int, tuple[object, torch.nn.Module]] = {}
    if args.large:
        torch.manual_seed(0)
        for k in args.large_starts:
            m = large_classifier(k_out, args.large_model, args.large_size, k)
            if large:  # same weights for every start block
                m.load_state_dict(next(iter(large.values()))[1].state_dict())
            p = copy.copy(pipe)
            p.classifier = m
            large[k] = (p, m)

    separate = None  # a proposer that shares its trunk (EomtProposer share_trunk_from): also time separate passes
    if getattr(pipe.proposer, "share_trunk_from", None) is not None:
        separate = copy.copy(pipe)
        separate.proposer = copy.copy(pipe.proposer)
        separate.proposer.share_trunk_from = None

    sys.path.insert(0, str(ROOT / "tests"))
    import reference_postprocess_bands as previous  # noqa: E402  (the post-processing before issue 25)
    from vitp import postprocess as current

    def vitp_previous(b: object) -> object:
        props = pipe.propose(b, task)
        return post_only(previous, pipe, b, props, pipe.classify(b, [props])[0][0], "vitp")

    unskipped = copy.copy(pipe)  # the same pipeline, every proposal classified (empty ones too)
    unskipped.settings = dataclasses.replace(pipe.settings, skip_empty_proposals=False)
    every = copy.copy(pipe)  # the same pipeline, every kept panoptic candidate post-processed at full size
    every.settings = dataclasses.replace(pipe.settings, rule_out_candidates=False)
    candidates: dict[str, list[tuple[int, int]]] = {"proposer": [], "vitp": []}

    fns_per_image: list[dict[str, Callable[[], object]]] = []
    n_points = []
    segments: dict[str, list[int | None]] = {"proposer": [], "vitp": []}
    with torch.inference_mode():
        for batch in batches:
            props = pipe.propose(batch, task)
            valid = batch.valid_tensor()
            logits = pipe.classify(batch, [props])[0][0]
            classified = props.mask_logits.shape[1] if logits.classified is None else int(logits.classified.sum())
            # what the pipeline's own ViT-P path classifies (the present proposals alone), for the replays
            present = (pipe.vitp_proposals(batch, [props]) or [props])[0]
            present_logits = pipe.classify(batch, [present])[0][0]
            n_points.append((props.mask_logits.shape[1], classified * pipe.settings.top_k))
            preds = pipe(batch, variants=("proposer", "vitp")).predictions
            for name in segments:
                segments[name].append(count_segments(preds[name][0], task))
            if task == "panoptic":
                for name, counts in panoptic_candidates(pipe, batch, props, logits).items():
                    candidates[name].append(counts)
            fns: dict[str, Callable[[], object]] = {
                "proposer": lambda b=batch: pipe(b, variants=("proposer",)),
                "vitp": lambda b=batch: pipe(b, variants=("vitp",)),
                "propose": lambda b=batch: pipe.propose(b, task),
                "pointvit": lambda b=batch, p=props: pipe.classify(b, [p]),
                "vitp every proposal": lambda b=batch: unskipped(b, variants=("vitp",)),
                "pointvit every proposal": lambda b=batch, p=props: unskipped.classify(b, [p]),
                "post proposer": lambda b=batch, r=replay(pipe, props, None): r(b, variants=("proposer",)),
                "post vitp": lambda b=batch, r=replay(pipe, props, present_logits): r(b, variants=("vitp",)),
                "timm": lambda b=batch, v=valid: backbone(clf.prepare_images(b.images, v)[0]),
                "proposer all candidates": lambda b=batch: every(b, variants=("proposer",)),
                "vitp all candidates": lambda b=batch: every(b, variants=("vitp",)),
                "post vitp all candidates": lambda b=batch, r=replay(every, props, present_logits): r(b, variants=("vitp",)),
                "post proposer previous": lambda b=batch, p=props: post_only(previous, pipe, b, p, None, "proposer"),
                "post proposer current": lambda b=batch, p=props: post_only(current, pipe, b, p, None, "proposer"),
                "post vitp previous": lambda b=batch, p=props, lg=logits: post_only(previous, pipe, b, p, lg, "vitp"),
                "post vitp current": lambda b=batch, p=props, lg=logits: post_only(current, pipe, b, p, lg, "vitp"),
                "vitp previous": lambda b=batch: vitp_previous(b),
            }
            if separate is not None:
                fns["vitp separate"] = lambda b=batch: separate(b, variants=("vitp",))
            for k, (lp, lm) in large.items():
                fns[f"vitp L k{k}"] = lambda b=batch, lp=lp: lp(b, variants=("vitp",))
                fns[f"pointvit L k{k}"] = lambda b=batch, p=props, lp=lp: lp.classify(b, [p])
            if large:
                lm = next(iter(large.values()))[1]
                fns["timm L"] = lambda b=batch, v=valid, lm=lm: lm.backbone(lm.prepare_images(b.images, v)[0])
            if args.only:
                unknown = set(args.only) - set(fns) or ({"proposer"} - set(args.only))
                if unknown:
                    raise SystemExit(f"--only: unknown or missing variants {sorted(unknown)} (proposer is needed, the "
                                     f"ratios' base); known: {sorted(fns)}")
                fns = {k: f for k, f in fns.items() if k in args.only}
            fns_per_image.append(fns)
        machine = machine_line("cpu")  # CPU, cores, torch, threads, load average at start
        cpu, wall = interleaved_totals(fns_per_image, args.reps)
    n = len(batches)
    h, w = batches[0].images.shape[-2:]
    depth = len(backbone.blocks)
    print(f"`python {' '.join(['scripts/bench_end_to_end.py', *(sys.argv[1:] if argv is None else argv)])}`\n")
    print(f"{n} images ({task}; first input {h}x{w}), {statistics.mean(q for q, _ in n_points):.0f} proposals and "
          f"{statistics.mean(c for _, c in n_points):.1f} points classified per image (the rest empty), "
          f"{args.reps} interleaved repetitions (medians); classifier {type(clf).__name__} "
          f"({depth} blocks, dim {clf.embed_dim}, image_size {clf.image_size}, point_start_block "
          f"{clf.point_start_block}); {machine}, {load_average()} at end")
    if segments["vitp"][0] is not None:
        print("segments kept per image: " + ", ".join(
            f"{name} {statistics.mean(v):.1f}" for name, v in segments.items()))
    if candidates["vitp"]:
        print("panoptic candidates per image, kept by the keep rule -> post-processed at full size: " + ", ".join(
            f"{name} {statistics.mean(c[0] for c in v):.1f} -> {statistics.mean(c[1] for c in v):.1f}"
            for name, v in candidates.items()))
    print()
    print("| variant | images/s (CPU) | images/s (wall) | ms / image (CPU) | CPU / proposer (wall) |")
    print("|---|---:|---:|---:|---:|")
    for name in cpu:
        print(f"| {name} | {n / cpu[name]:.2f} | {n / wall[name]:.2f} | {1000 * cpu[name] / n:.1f} | "
              f"{cpu[name] / cpu['proposer']:.2f} ({wall[name] / wall['proposer']:.2f}) |")
    ratios = {"vitp / proposer": ("vitp", "proposer"), "pointvit / timm": ("pointvit", "timm"),
              "pointvit / proposer": ("pointvit", "proposer"),
              "vitp every proposal / proposer": ("vitp every proposal", "proposer"),
              "vitp / vitp every proposal": ("vitp", "vitp every proposal"),
              "pointvit / pointvit every proposal": ("pointvit", "pointvit every proposal"),
              "post vitp / post proposer": ("post vitp", "post proposer"),
              "vitp all candidates / proposer all candidates": ("vitp all candidates", "proposer all candidates"),
              "vitp / vitp all candidates": ("vitp", "vitp all candidates"),
              "post vitp / post vitp all candidates": ("post vitp", "post vitp all candidates"),
              "post proposer current / previous": ("post proposer current", "post proposer previous"),
              "post vitp current / previous": ("post vitp current", "post vitp previous"),
              "vitp / vitp previous": ("vitp", "vitp previous"),
              "vitp previous / proposer": ("vitp previous", "proposer")}
    if separate is not None:
        ratios["vitp separate / proposer"] = ("vitp separate", "proposer")
        ratios["vitp / vitp separate"] = ("vitp", "vitp separate")
    for k in large:
        ratios[f"vitp L k{k} / proposer"] = (f"vitp L k{k}", "proposer")
        ratios[f"pointvit L k{k} / timm L"] = (f"pointvit L k{k}", "timm L")
    print("\n| ratio | CPU time (wall) |")
    print("|---|---:|")
    for label, (a, b) in ratios.items():
        if a not in cpu or b not in cpu:
            continue
        print(f"| {label} | {cpu[a] / cpu[b]:.2f} ({wall[a] / wall[b]:.2f}) |")
    return {"cpu": cpu, "wall": wall}


if __name__ == "__main__":
    main()
