"""Why does ViT-P move mIoU but not PQ in the default run? Counts, over the test proposals that match
a ground-truth segment (IoU >= 0.5), how many have a correct top class and how many clear the
panoptic object-mask threshold, for the proposer alone and for proposer + ViT-P.

Run from the directory where `make demo` wrote its outputs (the repository by default):

    python scripts/diagnose_confidence.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from vitp.classifiers import PointViT
from vitp.data.coco import CocoPanopticDataModule
from vitp.fusion import fuse_class_probs
from vitp.pipeline import classify_proposals, oracle_class_probs, original_size_logits
from vitp.proposers import Mask2FormerProposer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml")
    parser.add_argument("--proposer", default="outputs/synthetic/proposer_mask2former/hf_model")
    parser.add_argument("--ckpt", default="outputs/synthetic/vitp_tiny_mask2former/checkpoints/last.ckpt")
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())["model"]["init_args"]
    dm = CocoPanopticDataModule(root=None, eval_batch_size=8, num_workers=0, image_size=256)
    info = dm.dataset_info
    dm.setup("test")
    proposer = Mask2FormerProposer(model=args.proposer, num_classes=info.num_classes,
                                   class_names=list(info.class_names)).eval()
    classifier = PointViT(info.num_classes, **config["classifier"]["init_args"]).eval()
    state = torch.load(args.ckpt, weights_only=True)["state_dict"]
    classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")})
    counts = dict.fromkeys(["matched", "objectness", "proposer_confident", "vitp_confident",
                            "proposer_correct", "vitp_correct"], 0)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            proposals = proposer(batch.images, "panoptic", batch.targets)
            point_logits = classify_proposals(classifier, batch, proposals)
            variants = {"proposer": proposals.class_logits.softmax(-1),
                        "vitp": fuse_class_probs(proposals.class_logits, point_logits, config["fusion_alpha"])}
            for i, target in enumerate(batch.targets):
                logits = original_size_logits(proposals, batch, i)
                oracle = oracle_class_probs(logits, target, info.num_classes)
                matched = oracle[:, -1] < 0.5
                gold = oracle[matched, :-1].argmax(-1)
                counts["matched"] += int(matched.sum())
                counts["objectness"] += int((1 - variants["proposer"][i, matched, -1] > args.threshold).sum())
                for name, probs in variants.items():
                    top, label = probs[i, matched, :-1].max(-1)
                    counts[f"{name}_confident"] += int((top > args.threshold).sum())
                    counts[f"{name}_correct"] += int((label == gold).sum())
    n = max(1, counts["matched"])
    print(f"{counts['matched']} test proposals match a ground-truth segment (IoU >= 0.5)")
    print(f"  proposer objectness > {args.threshold}: {counts['objectness']} ({100 * counts['objectness'] / n:.1f} %)")
    for name in ("proposer", "vitp"):
        print(f"  {name:8s}: top class correct {counts[f'{name}_correct']} ({100 * counts[f'{name}_correct'] / n:.1f} %), "
              f"top probability > {args.threshold}: {counts[f'{name}_confident']}")


if __name__ == "__main__":
    main()
