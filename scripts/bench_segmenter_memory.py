"""Peak memory (RSS) and time of ``vitp.Segmenter`` on large photos (docs/benchmarks.md,
"Segmenter memory on large photos").

The model is the default ViT-P config (``configs/synthetic/vitp/tiny_mask2former.yaml``) with a
randomly initialised ``Mask2FormerProposer(preset="small")`` (the stage-1 architecture of
``make demo``, 50 queries) and a randomly initialised classifier, on the label space of a tiny
generated dataset; no training. Each image size runs in its own process (peak RSS = that process's
``ru_maxrss``: model, image, inference and results), watched by the parent, which kills it when
its RSS passes ``--cap-gb``. Time: the second of two calls on the same image, per megapixel.

    python scripts/bench_segmenter_memory.py --sizes 1000x750 2000x1500 4000x3000 8000x6000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic" / "vitp" / "tiny_mask2former.yaml"


def build(work: Path) -> Path:
    """Write the tiny dataset, the random proposer and a checkpoint under ``work``."""
    import lightning as L
    import torch

    from vitp.cli import cli
    from vitp.data.coco import read_dataset_info
    from vitp.data.synthetic import generate_panoptic_dataset
    from vitp.proposers import Mask2FormerProposer

    root = generate_panoptic_dataset(work / "coco", num_train=4, num_val=2, image_size=112, seed=1)
    torch.manual_seed(0)
    info = read_dataset_info(root, "val")
    os.chdir(work)
    Mask2FormerProposer(preset="small", num_classes=info.num_classes, class_names=list(info.class_names),
                        is_thing=list(info.is_thing)).save_pretrained("outputs/synthetic/proposer_mask2former/hf_model")
    built = cli(["--config", str(CONFIG), "--data.init_args.root", str(root), "--trainer.logger", "false"], run=False)
    torch.save({"state_dict": built.model.state_dict(), "pytorch-lightning_version": L.__version__}, work / "m.ckpt")
    return root


def child(work: Path, size: str, kwargs: dict) -> None:
    """Run in a fresh process: load, segment one random ``WxH`` photo twice, print JSON."""
    import resource

    import numpy as np
    import torch

    from vitp import Segmenter

    os.chdir(work)
    w, h = (int(v) for v in size.split("x"))
    seg = Segmenter.from_checkpoint(work / "m.ckpt", CONFIG, ["--data.init_args.root", str(work / "coco")], **kwargs)
    rng = np.random.default_rng(0)
    # smooth random photo: blocks of colour, upsampled (random pixels would make every segment tiny)
    small = rng.integers(0, 256, (h // 50 + 1, w // 50 + 1, 3), dtype=np.uint8)
    image = np.ascontiguousarray(np.repeat(np.repeat(small, 50, 0), 50, 1)[:h, :w])
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        result = seg(image)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"size": size, "peak_rss_gb": round(peak, 3), "rss_after_load_gb": round(after_load, 3),
                      "seconds": round(times[-1], 2), "s_per_mp": round(times[-1] / (w * h / 1e6), 3),
                      "segments": len(result.segments), "instances": len(result.instances),
                      "threads": torch.get_num_threads()}), flush=True)


def watch(cmd: list[str], cap_gb: float) -> tuple[int, str, float]:
    """Run ``cmd``; kill it when its RSS passes ``cap_gb``. Returns (rc, stdout, max RSS seen GB)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    seen = 0.0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    seen = max(seen, int(line.split()[1]) / 2**20)
        except FileNotFoundError:
            break
        if seen > cap_gb:
            proc.kill()
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    return proc.wait(), out, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1000x750", "2000x1500", "4000x3000", "8000x6000"])
    parser.add_argument("--cap-gb", type=float, default=8.0, help="kill a run whose RSS passes this")
    parser.add_argument("--segmenter-kwargs", default="{}", help='JSON, e.g. \'{"max_image_side": 1333}\'')
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], json.loads(args.segmenter_kwargs))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); "
                        f"import bench_segmenter_memory as b; b.build(__import__('pathlib').Path({tmp!r}))"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for size in args.sizes:
            rc, out, seen = watch([sys.executable, __file__, "--child", tmp, size,
                                   "--segmenter-kwargs", args.segmenter_kwargs], args.cap_gb)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if rc == 0 and lines:
                print(lines[-1], flush=True)
            else:
                print(json.dumps({"size": size, "failed": f"rc {rc}", "max_rss_seen_gb": round(seen, 3),
                                  "cap_gb": args.cap_gb}), flush=True)


if __name__ == "__main__":
    main()
