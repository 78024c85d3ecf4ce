"""vitp's proposer-alone inference against Hugging Face's own on the same Mask2Former (issue 25).

Same weights, same input tensors (the test split's images as ``vitp test`` prepares them, batch of 1),
panoptic task, the reference keep rule with the same thresholds on both sides (class score
``--threshold``, default 0.5; mask 0.5; overlap 0.8):

* ``hf``: ``Mask2FormerForUniversalSegmentation`` (the very module inside vitp's proposer) +
  ``Mask2FormerImageProcessor.post_process_panoptic_segmentation`` to the image's original size;
* ``vitp``: ``TwoStagePipeline`` with the proposer alone (variant ``proposer``): the same forward
  through ``Mask2FormerProposer`` + vitp's post-processing (``vitp.postprocess``) at the original size;
* ``forward``: the HF forward alone (the part both share).

Interleaved per image, the variant order rotating per repetition; reported: images/s from the
median over repetitions of the summed process CPU time (and wall time), the ratio vitp / hf, and
how far the two panoptic results agree: the share of pixels whose class (void = -1) is the same,
the same share on the pixels vitp gives a segment (HF paints each kept query's whole argmax region,
vitp as Mask2Former's reference only where that query's mask is >= 0.5), the share of images where
both keep the same classes, and each one's PQ against the ground truth
(``vitp.metrics.PanopticQuality``; HF's segments are converted to vitp's ``PanopticPrediction``).
Each image is cut to its valid region first (batch of one: HF's processor would pad nothing, and its
post-processing knows nothing of padding). ``--sharpen`` scales the class head (both paths) to get a
proposer with confident queries for the equality check.

    python scripts/bench_hf_proposer.py --workdir /tmp/sa_s0 --data-root /tmp/data_default

Arguments after ``--`` go to ``vitp`` as overrides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_point_vit import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml"
CHECKPOINT = Path("outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt")


def hf_panoptic(model, processor, images: torch.Tensor, size: tuple[int, int], stuff: set[int], threshold: float):
    """HF's own path: forward + ``post_process_panoptic_segmentation`` -> (segment map, segments)."""
    out = model(pixel_values=images)
    result = processor.post_process_panoptic_segmentation(
        out, threshold=threshold, mask_threshold=0.5, overlap_mask_area_threshold=0.8,
        label_ids_to_fuse=stuff, target_sizes=[size])[0]
    return result["segmentation"], result["segments_info"]


def to_prediction(segmentation: torch.Tensor, segments: list[dict]):
    """HF's panoptic result (segment ids, unassigned pixels 0 or -1) as vitp's ``PanopticPrediction``
    (index into ``labels``, void -1)."""
    from vitp.structures import PanopticPrediction

    seg = segmentation.long()
    labels = torch.tensor([s["label_id"] for s in segments], dtype=torch.long)
    scores = torch.tensor([s["score"] for s in segments], dtype=torch.float)
    ids = torch.tensor([s["id"] for s in segments], dtype=torch.long)
    remap = torch.full((max(int(seg.max()), int(ids.max()) if len(ids) else 0) + 2,), -1, dtype=torch.long)
    remap[ids + 1] = torch.arange(len(ids))
    return PanopticPrediction(segments=remap[seg + 1], labels=labels, scores=scores)


def unpadded(batch):
    """A batch of one image cut to its valid region: HF's image processor pads nothing for a single
    image, and its post-processing knows nothing of padding, so both paths see the same pixels."""
    from dataclasses import replace

    from vitp.structures import Batch

    target = batch.targets[0]
    h, w = target.valid_size
    return Batch(images=batch.images[..., :h, :w].contiguous(),
                 targets=[replace(target, masks=target.masks[..., :h, :w])])


def class_map(segments: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    lut = torch.cat([labels.long(), torch.tensor([-1])])  # index -1 (void) reads the last entry
    return lut[segments.long()]


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT, help="the run's directory (make demo's outputs/)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--ckpt", type=Path, default=None, help=f"default: WORKDIR/{CHECKPOINT}")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--proposer", type=Path, default=None, help="the proposer saved with save_pretrained "
                        "(default: the config's)")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="class-score threshold of both (HF threshold, vitp object_mask_threshold)")
    parser.add_argument("--sharpen", type=float, default=1.0,
                        help="multiply the class head's weights and bias by this (both paths): a proposer with "
                             "confident queries, for the equality check")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import Mask2FormerImageProcessor

    from vitp import Segmenter
    from vitp.metrics import PanopticQuality

    extra = ["--model.init_args.tasks", "[panoptic]", "--trainer.enable_progress_bar", "false"]
    if args.data_root is not None:
        extra += ["--data.init_args.root", str(args.data_root.resolve())]
    if args.proposer is not None:
        extra += ["--model.init_args.proposer.init_args.model", str(args.proposer.resolve())]
    old = os.getcwd()
    os.chdir(args.workdir.resolve())
    try:
        seg = Segmenter.from_checkpoint((args.ckpt or args.workdir / CHECKPOINT).resolve(), config=args.config.resolve(),
                                        overrides=[*extra, *overrides], batch_size=1)
        dataset = seg.datamodule.build_dataset("test")
        batches = [unpadded(seg.collate([dataset[i]])) for i in range(min(args.images, len(dataset)))]
    finally:
        os.chdir(old)
    module = seg.module.eval()
    pipe, info = module.pipeline, module.dataset_info
    from dataclasses import replace

    pipe.settings = replace(pipe.settings, keep_rule="reference", object_mask_threshold=args.threshold,
                            overlap_threshold=0.8)
    model = pipe.proposer.hf
    if args.sharpen != 1.0:
        with torch.no_grad():
            model.class_predictor.weight.mul_(args.sharpen)
            model.class_predictor.bias.mul_(args.sharpen)
    processor = Mask2FormerImageProcessor()
    stuff = {k for k in range(info.num_classes) if not info.is_thing[k]}

    fns = {
        "hf": lambda b: hf_panoptic(model, processor, b.images, tuple(b.targets[0].orig_size), stuff,
                                 args.threshold),
        "vitp": lambda b: pipe(b, variants=("proposer",)).predictions["proposer"][0].panoptic,
        "forward": lambda b: model(pixel_values=b.images),
    }
    names = list(fns)
    cpu = {n: [0.0] * args.reps for n in names}
    wall = {n: [0.0] * args.reps for n in names}
    agree, pixels, kept = 0, 0, {"hf": 0, "vitp": 0}
    agree_on_vitp, vitp_pixels, same_classes = 0, 0, 0
    pq = {n: PanopticQuality(info) for n in ("hf", "vitp")}
    with torch.inference_mode():
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for b in batches:
                for n in order:
                    c0, w0 = time.process_time(), time.perf_counter()
                    out = fns[n](b)
                    cpu[n][rep] += time.process_time() - c0
                    wall[n][rep] += time.perf_counter() - w0
                    if rep == 0 and n == "hf":
                        hf_pred = to_prediction(*out)
                    if rep == 0 and n == "vitp":
                        vitp_pred = out
                if rep == 0:
                    for name, p in (("hf", hf_pred), ("vitp", vitp_pred)):
                        pq[name].update([p], b.targets)
                        kept[name] += len(p.labels)
                    a = class_map(hf_pred.segments, hf_pred.labels)
                    v = class_map(vitp_pred.segments, vitp_pred.labels)
                    agree += int((a == v).sum())
                    pixels += a.numel()
                    on = v >= 0  # HF paints a segment's whole argmax region, vitp (as Mask2Former) where mask >= 0.5
                    agree_on_vitp += int((a[on] == v[on]).sum())
                    vitp_pixels += int(on.sum())
                    same_classes += int(set(hf_pred.labels.tolist()) == set(vitp_pred.labels.tolist()))
    n_img = len(batches)
    print(machine_line("cpu"), f"torch threads {torch.get_num_threads()}, {n_img} images x {args.reps} reps")
    med = {n: statistics.median(cpu[n]) for n in names}
    medw = {n: statistics.median(wall[n]) for n in names}
    for n in names:
        print(f"{n:8s} {n_img / med[n]:7.2f} img/s CPU ({n_img / medw[n]:.2f} wall)")
    result = {"vitp_over_hf_cpu": med["vitp"] / med["hf"], "vitp_over_hf_wall": medw["vitp"] / medw["hf"],
              "pixel_class_agreement": 100.0 * agree / max(1, pixels),
              "agreement_on_vitp_segments": 100.0 * agree_on_vitp / vitp_pixels if vitp_pixels else float("nan"),
              "images_same_classes": 100.0 * same_classes / n_img,
              "segments_hf": kept["hf"] / n_img, "segments_vitp": kept["vitp"] / n_img}
    for n in ("hf", "vitp"):
        result[f"pq_{n}"] = float(pq[n].compute()["pq"])
    print(f"vitp / hf: {result['vitp_over_hf_cpu']:.3f}x CPU ({result['vitp_over_hf_wall']:.3f}x wall); "
          f"same class on {result['pixel_class_agreement']:.2f} % of pixels "
          f"({result['agreement_on_vitp_segments']:.3f} % of vitp's segment pixels; same classes in "
          f"{result['images_same_classes']:.0f} % of images); "
          f"PQ hf {result['pq_hf']:.2f}, vitp {result['pq_vitp']:.2f}; segments per image hf "
          f"{result['segments_hf']:.1f}, vitp {result['segments_vitp']:.1f}")
    return result


if __name__ == "__main__":
    main()
