"""ONNX export of the ViT-P point classifier (``vitp-export``).

The exported graph is ``PointViT`` with a fixed square input frame, the whole frame valid::

    images  float[B, 3, S, S]   normalised (the data module's mean / std), S = the classifier's
                                image_size: resize the long side of the image to S and pad the rest
                                with zeros (as the data module does) — or pass any image squashed
                                to S x S
    points  float[B, P, 2]      (y, x) in [-1, 1] of the frame; P is dynamic
    logits  float[B, P, K]      (K + 1 with a no-object output)

A mask-aware classifier (``glimpse.masks``) takes a third input, the segment each point
classifies: ``point_masks float[B, P, S, S]`` (1 inside, on the same frame as ``images``). vitp gives
each proposal's binarised mask cut to its connected part under the point
(``vitp.proposal_geometry.point_components``); feed the exported model the same.

B is fixed at export (default 1): PointViT loops over images in Python. Points are independent with
``one_way`` attention, so any P gives the logits PyTorch gives. ``vitp-export`` checks onnxruntime
against PyTorch on random inputs and writes ``point_classifier.onnx`` + ``point_classifier.json``
(input spec, class names, normalisation).

The mask proposer is not exported: the HF Mask2Former / OneFormer pixel decoders run
multi-scale deformable attention whose sampling locations, level shapes and query selection are
computed in Python from tensor values (``.tolist()``, per-level loops), so a traced graph would
be valid only for one input size and the TorchScript exporter fails on them; the post-processing
(thresholds, per-image variable segment counts) is data-dependent Python as well.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from vitp.structures import PointMasks

INPUT_NAMES = ("images", "points", "point_masks")  # the last only for a mask-aware classifier


class PointClassifierForExport(nn.Module):
    """``(images [B,3,S,S], points [B,P,2][, point_masks [B,P,S,S]]) -> logits [B,P,K]``: a PointViT
    over the whole frame (``point_masks`` for a mask-aware classifier)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor, points: torch.Tensor, point_masks: torch.Tensor | None = None) -> torch.Tensor:
        if point_masks is None:
            return self.classifier(images, points, None)
        return self.classifier(images, points, None, point_masks=frame_point_masks(point_masks))


def frame_point_masks(point_masks: torch.Tensor) -> PointMasks:
    """``PointMasks`` of ``float[B, P, S, S]``: point p of image b reads mask p of image b."""
    B, P = point_masks.shape[:2]
    index = torch.arange(P, device=point_masks.device)[None].expand(B, P)
    return PointMasks(list(point_masks.unbind(0)), index)


def _random_inputs(classifier: nn.Module, b: int, size: int, p: int, generator: torch.Generator | None = None):
    images = torch.randn(b, 3, size, size, generator=generator)
    points = torch.rand(b, p, 2, generator=generator) * 2 - 1
    if not getattr(classifier, "needs_point_masks", False):
        return images, points
    # a disc around each point, of random radius
    rows = (torch.arange(size) + 0.5) / size * 2 - 1
    radius = torch.rand(b, p, 1, 1, generator=generator) * 0.4 + 0.05
    d2 = (rows[None, None, :, None] - points[..., 0, None, None]) ** 2 + (rows[None, None, None, :] - points[..., 1, None, None]) ** 2
    return images, points, (d2 < radius**2).float()


def export_point_classifier(classifier: nn.Module, path: str | os.PathLike, image_size: int | None = None,
                            batch_size: int = 1, num_points: int = 8, opset: int = 17) -> Path:
    """Write ``classifier`` (a ``PointViT``) to ``path`` as ONNX; ``image_size`` defaults to the
    classifier's. The model is exported in eval mode, points unchunked (dynamic P)."""
    if getattr(classifier, "attention", "one_way") != "one_way":
        raise ValueError("ONNX export supports attention='one_way' (full attention mixes points and padding)")
    size = int(image_size or classifier.image_size or 224)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training, chunk = classifier.training, classifier.point_chunk_size
    classifier.eval()
    classifier.point_chunk_size = None  # one pass over all points: P stays a graph dimension
    try:
        wrapper = PointClassifierForExport(classifier).eval()
        inputs = _random_inputs(classifier, batch_size, size, num_points)
        names = list(INPUT_NAMES[: len(inputs)])
        axes = {"points": {1: "num_points"}, "logits": {1: "num_points"}, "point_masks": {1: "num_points"}}
        frame, _ = classifier.prepare_images(inputs[0], None)
        ph, pw = classifier.patch_size
        with torch.no_grad(), classifier.fixed_pos_grid(frame.shape[-2] // ph, frame.shape[-1] // pw):
            torch.onnx.export(
                wrapper, inputs, str(path), input_names=names, output_names=["logits"],
                dynamic_axes={k: v for k, v in axes.items() if k in names + ["logits"]}, opset_version=opset,
                dynamo=False,
            )
    finally:
        classifier.point_chunk_size = chunk
        classifier.train(was_training)
    return path


def onnx_parity(classifier: nn.Module, path: str | os.PathLike, num_points: Sequence[int] = (5, 37),
                seed: int = 0) -> float:
    """Max |onnxruntime - PyTorch| of the logits on random inputs (several point counts)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    b, size = int(shape[0]), int(shape[2])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    classifier.eval()
    wrapper = PointClassifierForExport(classifier).eval()
    for p in num_points:
        inputs = _random_inputs(classifier, b, size, p, g)
        with torch.no_grad():
            ref = wrapper(*inputs).float().numpy()
        out = session.run(["logits"], {n: x.numpy() for n, x in zip(INPUT_NAMES, inputs)})[0]
        worst = max(worst, float(abs(out - ref).max()))
    return worst


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``vitp-export`` (exit status 0 on success; see :func:`run`)."""
    run(argv)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """``vitp-export --config CONFIG --ckpt_path CKPT --out DIR [-- vitp overrides]``: the paths
    written and onnxruntime's max difference from PyTorch (``max_abs_diff``)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="vitp-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, action="append", help="the training YAML (repeatable)")
    parser.add_argument("--ckpt_path", required=True, help="the ViT-P checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--image_size", type=int, default=None, help="S (default: the classifier's image_size)")
    parser.add_argument("--batch_size", type=int, default=1, help="B of the exported graph")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--atol", type=float, default=1e-3, help="fail when onnxruntime differs by more")
    args = parser.parse_args(argv)

    from vitp.api import Segmenter

    seg = Segmenter.from_checkpoint(args.ckpt_path, config=args.config, overrides=overrides)
    classifier = seg.module.classifier
    if classifier is None:
        raise SystemExit("the config has no point classifier to export")
    path = export_point_classifier(classifier, args.out / "point_classifier.onnx", args.image_size,
                                   args.batch_size, opset=args.opset)
    info = seg.dataset_info
    meta = {
        "inputs": {"images": "float[B, 3, S, S] normalised: (rgb / 255 - mean) / std, long side resized to S, "
                             "zero padding", "points": "float[B, P, 2] (y, x) in [-1, 1]"}
        | ({"point_masks": "float[B, P, S, S], 1 on the segment each point classifies"}
           if getattr(classifier, "needs_point_masks", False) else {}),
        "outputs": {"logits": "float[B, P, K] (+1 no-object column when trained with one)"},
        "image_size": int(args.image_size or classifier.image_size), "batch_size": args.batch_size,
        "mean": list(seg.transform.mean), "std": list(seg.transform.std),
        "class_names": list(info.class_names), "category_ids": list(info.category_ids),
        "num_outputs": int(classifier.num_classes),
    }
    result: dict[str, Any] = {"onnx": str(path), "meta": str(path.with_suffix(".json"))}
    try:
        result["max_abs_diff"] = onnx_parity(classifier, path)
    except ImportError:
        print("onnxruntime is not installed (pip install 'vitp[onnx]'): parity not checked")
    meta["onnxruntime_max_abs_diff"] = result.get("max_abs_diff")
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if result.get("max_abs_diff", 0.0) > args.atol:
        raise SystemExit(f"onnxruntime differs from PyTorch by {result['max_abs_diff']:.2e} > {args.atol}")
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
