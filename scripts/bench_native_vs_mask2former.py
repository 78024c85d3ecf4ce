"""Native grouping proposer vs Mask2Former under the same ViT-P classifier (issue 10's must-show).

For two trained proposers (a Mask2Former ``save_pretrained`` directory and a native one), on the
test split of the data module (the generated dataset's val split):

* parameter count of each proposer;
* **class-agnostic mask recall**: the fraction of ground-truth segments (crowd excluded) that some
  proposal matches at IoU > 0.5. The proposals are the ones the evaluation pass itself produces
  (a forward hook on the proposer inside ``trainer.test``), binarised as everywhere in vitp
  (mask logit > 0 at the original image size, ``vitp.proposal_geometry.original_size_logits``), matched by
  ``vitp.proposal_geometry.match_segments``; split into thing and stuff segments;
* **PQ with oracle classes**, **PQ with ViT-P classes** and PQ of the proposer alone: one
  ``trainer.test`` pass of the package's own evaluation (``ViTPModule`` + ``TwoStagePipeline``,
  metrics ``test/pq_oracle``, ``test/pq``, ``test/pq_proposer``) with the stage-2 config
  (``configs/synthetic/vitp/tiny_mask2former.yaml``: post-processing, keep rule, fusion) and its
  proposer swapped. The point classifier is the **same** trained PointViT for both proposers (the
  ``classifier.*`` weights of the given ViT-P checkpoint), not retrained for the native proposer;
* **forward time** of each proposer alone on one evaluation batch: process CPU time
  (``time.process_time``), warm-up, then interleaved repetitions (the order alternates), medians,
  and the ratio native / Mask2Former;
* optionally the training cost of each proposer from a ``/usr/bin/time -v`` log (``--train-log``).

    python scripts/bench_native_vs_mask2former.py \\
        --mask2former outputs/synthetic/proposer_mask2former/hf_model \\
        --native outputs/synthetic/proposer_native_budget/model \\
        --vitp-checkpoint outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt \\
        --root data/generated/synthetic_coco --out outputs/native_vs_m2f.json \\
        --train-log mask2former=m2f_train.log --train-log native=native_train.log

Prints a markdown table and writes everything to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic" / "vitp" / "tiny_mask2former.yaml"
PROPOSER_CLASSES = {"mask2former": "vitp.proposers.Mask2FormerProposer", "native": "vitp.proposers.NativeProposer"}
NAMES = ("mask2former", "native")


class ProposalRecall(L.Callback):
    """Class-agnostic recall of the proposals the evaluation pass produces.

    A forward hook on the proposer keeps the proposals of the batch (the ``panoptic`` call when the
    proposer is task-conditioned); ``on_test_batch_end`` matches them to the batch's ground truth.
    """

    def __init__(self, proposer: torch.nn.Module, is_thing: torch.Tensor, iou_threshold: float = 0.5) -> None:
        self.iou_threshold = iou_threshold
        self.is_thing = is_thing.bool().cpu()
        self.pending = []
        self.handle = proposer.register_forward_hook(self._hook)
        self.matched = {"all": 0, "thing": 0, "stuff": 0}
        self.total = {"all": 0, "thing": 0, "stuff": 0}
        self.proposals, self.nonempty, self.images = 0, 0, 0

    def _hook(self, module, args, output) -> None:
        task = args[1] if len(args) > 1 else "panoptic"
        if task == "panoptic" or not self.pending:
            self.pending = [output]

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from vitp.proposal_geometry import original_size_logits

        proposals, self.pending = self.pending[0], []
        for i, target in enumerate(batch.targets):
            pred = (original_size_logits(proposals, batch, i) > 0).flatten(1).cpu()  # [Q, P]
            self.update(pred, target)

    def update(self, pred: torch.Tensor, target) -> None:
        """``pred bool[Q, P]``: one image's binarised proposals on the pixels of ``target.segments``."""
        from vitp.proposal_geometry import match_segments

        self.images += 1
        self.proposals += pred.shape[0]
        self.nonempty += int(pred.any(1).sum())
        index = target.segments.flatten().cpu()
        n = len(target.labels)
        gt = torch.zeros((n, index.numel()), dtype=torch.bool)
        valid = index >= 0
        gt[index[valid], valid.nonzero()[:, 0]] = True
        keep = ~target.is_crowd.bool().cpu()
        if not keep.any() or pred.shape[0] == 0:
            hit = torch.zeros(int(keep.sum()), dtype=torch.bool)
        else:
            iou, _ = match_segments(gt[keep], pred)  # best proposal of each ground-truth segment
            hit = iou > self.iou_threshold
        thing = self.is_thing[target.labels.cpu()[keep]]
        for key, select in (("all", torch.ones_like(thing)), ("thing", thing), ("stuff", ~thing)):
            self.matched[key] += int(hit[select].sum())
            self.total[key] += int(select.sum())

    def result(self) -> dict[str, float]:
        out = {f"recall_{k}": 100.0 * self.matched[k] / max(1, self.total[k]) for k in self.total}
        out.update({f"gt_segments_{k}": self.total[k] for k in self.total})
        out["proposals_per_image"] = self.proposals / max(1, self.images)
        out["nonempty_proposals_per_image"] = self.nonempty / max(1, self.images)
        return out


def build(name: str, proposer_dir: str, config: Path, overrides: list[str]):
    """``vitp.cli`` objects for the stage-2 config with its proposer swapped for ``proposer_dir``."""
    from vitp.cli import cli

    proposer = json.dumps({"class_path": PROPOSER_CLASSES[name], "init_args": {"model": str(proposer_dir)}})
    args = ["--config", str(config), f"--model.init_args.proposer={proposer}", "--trainer.logger", "false",
            "--trainer.accelerator", "cpu", "--trainer.callbacks=[]", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *overrides]
    return cli(args, run=False)


def load_classifier(module, checkpoint: str) -> bool | None:
    """Load the ``classifier.*`` weights of a ViT-P checkpoint (strict). Returns whether the
    checkpoint's ``proposer.*`` weights equal the module's proposer (None when they do not fit it)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    classifier = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
    module.classifier.load_state_dict(classifier, strict=True)
    saved = {k[len("proposer."):]: v for k, v in state.items() if k.startswith("proposer.")}
    own = module.proposer.state_dict()
    if set(saved) != set(own) or any(saved[k].shape != own[k].shape for k in own):
        return None
    return all(torch.equal(saved[k], own[k]) for k in own)


def evaluate(name: str, proposer_dir: str, args) -> tuple[dict, torch.nn.Module, object]:
    """One test pass: metrics of every variant, recall, parameter counts; also the built module and
    data module (for timing)."""
    built = build(name, proposer_dir, args.config, args.override)
    module, datamodule = built.model, built.datamodule
    same = load_classifier(module, args.vitp_checkpoint)
    recall = ProposalRecall(module.proposer, module.is_thing)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[recall], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        limit_test_batches=args.limit_batches or 1.0)
    start = time.process_time()
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    cpu = time.process_time() - start
    recall.handle.remove()
    out = {
        "proposer_dir": str(proposer_dir),
        "proposer_params": sum(p.numel() for p in module.proposer.parameters()),
        "classifier_params": sum(p.numel() for p in module.classifier.parameters()),
        "proposer_equals_checkpoint": same,
        "test_pass_cpu_s": cpu,
        **recall.result(),
        **{k.removeprefix("test/"): float(v) for k, v in metrics.items()},
    }
    return out, module, datamodule


def time_forward(proposers: dict[str, torch.nn.Module], images: torch.Tensor, reps: int, warmup: int = 2) -> dict:
    """Median process CPU time of one proposer forward on ``images`` (interleaved repetitions)."""
    times: dict[str, list[float]] = {name: [] for name in proposers}
    order = list(proposers)
    with torch.inference_mode():
        for r in range(warmup + reps):
            for name in (order if r % 2 == 0 else order[::-1]):
                start = time.process_time()
                proposers[name](images, "panoptic")
                if r >= warmup:
                    times[name].append(time.process_time() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "reps": len(t)}
            for name, t in times.items()}


def read_time_log(path: str) -> dict[str, float]:
    """User, system and wall seconds of a ``/usr/bin/time -v`` report at the end of ``path``."""
    text = Path(path).read_text(errors="replace")
    user = float(re.findall(r"User time \(seconds\): ([\d.]+)", text)[-1])
    system = float(re.findall(r"System time \(seconds\): ([\d.]+)", text)[-1])
    wall = re.findall(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)[-1]
    seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    return {"train_cpu_s": user + system, "train_wall_s": seconds}


ROWS = [
    ("parameters (proposer)", "proposer_params", "{:,.0f}"),
    ("proposals / image (non-empty)", None, None),
    ("mask recall @ IoU > 0.5, all GT segments (%)", "recall_all", "{:.1f}"),
    ("  things (%)", "recall_thing", "{:.1f}"),
    ("  stuff (%)", "recall_stuff", "{:.1f}"),
    ("PQ, oracle classes", "pq_oracle", "{:.1f}"),
    ("PQ, ViT-P classes (same classifier)", "pq", "{:.1f}"),
    ("  PQ_th / PQ_st, ViT-P classes", None, None),
    ("PQ, proposer's own classes", "pq_proposer", "{:.1f}"),
    ("mIoU, ViT-P classes", "miou", "{:.1f}"),
    ("forward CPU time / batch (ms, median)", "forward_ms", "{:.0f}"),
    ("training CPU time (s)", "train_cpu_s", "{:.0f}"),
]


def table(results: dict[str, dict]) -> str:
    lines = ["| | Mask2Former small | native | native / Mask2Former |", "|---|---:|---:|---:|"]
    for label, key, fmt in ROWS:
        cells = []
        for name in NAMES:
            r = results[name]
            if label.startswith("proposals"):
                cells.append(f"{r['proposals_per_image']:.1f} ({r['nonempty_proposals_per_image']:.1f})")
            elif label.strip().startswith("PQ_th"):
                cells.append(f"{r.get('pq_th', float('nan')):.1f} / {r.get('pq_st', float('nan')):.1f}")
            else:
                cells.append(fmt.format(r[key]) if key in r else "-")
        ratio = ""
        if key in ("proposer_params", "forward_ms", "train_cpu_s") and all(key in results[n] for n in NAMES):
            ratio = f"{results['native'][key] / results['mask2former'][key]:.2f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mask2former", required=True, help="Mask2Former proposer directory (save_pretrained)")
    parser.add_argument("--native", required=True, help="native proposer directory (save_pretrained)")
    parser.add_argument("--vitp-checkpoint", required=True, help="ViT-P checkpoint whose classifier both use")
    parser.add_argument("--config", type=Path, default=CONFIG, help="stage-2 config (post-processing, classifier)")
    parser.add_argument("--root", default=None, help="dataset root (default: the config's)")
    parser.add_argument("--override", action="append", default=[], help="more vitp arguments (repeatable)")
    parser.add_argument("--limit-batches", type=int, default=None, help="evaluate this many batches only")
    parser.add_argument("--timing-reps", type=int, default=10, help="timed forwards per proposer")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--train-log", action="append", default=[], metavar="NAME=PATH",
                        help="/usr/bin/time -v log of a proposer's training (NAME: mask2former or native)")
    parser.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    args = parser.parse_args(argv)
    if args.root is not None:
        args.override = ["--data.init_args.root", str(args.root), *args.override]
    torch.set_num_threads(args.threads)

    results, proposers, images = {}, {}, None
    for name, directory in (("mask2former", args.mask2former), ("native", args.native)):
        results[name], module, datamodule = evaluate(name, directory, args)
        proposers[name] = module.proposer.eval()
        if images is None:
            images = next(iter(datamodule.test_dataloader())).images
    timing = time_forward(proposers, images, args.timing_reps)
    for name in NAMES:
        results[name]["forward_ms"] = 1000 * timing[name]["median_s"]
        results[name]["forward"] = timing[name]
    for item in args.train_log:
        name, path = item.split("=", 1)
        results[name].update(read_time_log(path))
        results[name]["train_log"] = path
    summary = {
        "forward_time_ratio_native_over_mask2former": timing["native"]["median_s"] / timing["mask2former"]["median_s"],
        "timing_batch_shape": list(images.shape),
        "threads": args.threads,
        "classifier": "the classifier.* weights of --vitp-checkpoint for both proposers (not retrained)",
        "vitp_checkpoint": str(args.vitp_checkpoint),
        "config": str(args.config),
        "overrides": args.override,
    }
    out = {"results": results, "summary": summary}
    print(table(results))
    print(f"\nforward-time ratio native / Mask2Former: {summary['forward_time_ratio_native_over_mask2former']:.2f} "
          f"(process CPU time, batch {tuple(images.shape)}, {args.timing_reps} interleaved reps, median)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
