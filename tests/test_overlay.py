"""Overlays users can read (labels never overlap, a legend with colour, name and score), the score
threshold and grayscale input through ``vitp.Segmenter``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vitp.structures import DatasetInfo, InstancePrediction, PanopticPrediction, Prediction
from vitp.visualize import _overlaps, place_labels, render_prediction, segment_colours

from test_predict_api import CONFIG, _args, run  # noqa: F401  (the tiny ViT-P fixture)


def test_placed_labels_never_overlap_and_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = int(rng.integers(40, 300)), int(rng.integers(40, 300))
        n = int(rng.integers(1, 40))
        # crowded: anchors in a small area, as labels of many small segments are
        anchors = [(int(rng.integers(0, h // 3 + 1)), int(rng.integers(0, w // 3 + 1))) for _ in range(n)]
        sizes = [(int(rng.integers(10, 60)), int(rng.integers(8, 14))) for _ in range(n)]
        boxes = place_labels(anchors, sizes, (h, w))
        placed = [b for b in boxes if b is not None]
        assert placed, "the first label always fits"
        for (l, t, r, b), (tw, th) in zip([b for b in boxes if b is not None],
                                          [s for s, b in zip(sizes, boxes) if b is not None]):
            assert 0 <= l and 0 <= t and r <= w and b <= h
            assert (r - l, b - t) == (tw + 2, th + 2)
        for a, b in itertools.combinations(placed, 2):
            assert not _overlaps(a, b), (a, b)


def _prediction() -> tuple[np.ndarray, Prediction, DatasetInfo]:
    info = DatasetInfo(class_names=("sky", "dog", "cat"), is_thing=(False, True, True),
                       category_ids=(1, 2, 3))
    segments = -torch.ones((120, 160), dtype=torch.long)
    segments[:40] = 0
    segments[50:60, 10:20] = 1
    segments[52:62, 22:32] = 2  # two small segments side by side: labels would collide
    pan = PanopticPrediction(segments, torch.tensor([0, 1, 2]), torch.tensor([0.9, 0.35, 0.6]))
    inst = InstancePrediction(torch.zeros((0, 120, 160), dtype=torch.bool), torch.zeros(0, dtype=torch.long),
                              torch.zeros(0))
    image = np.full((120, 160, 3), 90, np.uint8)
    return image, Prediction(semantic=segments.clamp(min=0), panoptic=pan, instance=inst), info


def test_overlay_has_a_legend_with_every_segment_colour(tmp_path):
    image, pred, info = _prediction()
    out = render_prediction(image, pred, info, "panoptic", scores=True, legend=True)
    assert out.shape[0] == 120 and out.shape[1] > 160
    panel = out[:, 160:].reshape(-1, 3)
    colours = segment_colours(pred.panoptic.labels.numpy(), np.array(info.is_thing)).astype(np.uint8)
    for c in colours:  # each segment's swatch is drawn in its exact colour
        assert (panel == c).all(1).any(), c
    plain = render_prediction(image, pred, info, "panoptic")
    assert plain.shape == image.shape  # figures (scripts/make_figure.py) keep their size
    sem = render_prediction(image, pred, info, "semantic", legend=True)
    assert sem.shape[1] > 160
    from PIL import Image

    Image.fromarray(out).save(tmp_path / "overlay.png")


def test_segmenter_score_threshold_and_grayscale(run):  # noqa: F811
    from vitp import Segmenter

    seg = Segmenter.from_checkpoint(run["ckpt"], CONFIG, _args(run["root"]))
    rng = np.random.default_rng(0)
    gray = np.repeat(np.repeat(rng.integers(0, 256, (8, 10), dtype=np.uint8), 12, 0), 12, 1)
    a = seg(gray)
    b = seg(np.repeat(gray[..., None], 3, -1))
    assert a.segments == b.segments and np.array_equal(a.panoptic, b.panoptic)
    assert [i["score"] for i in a.instances] == [i["score"] for i in b.instances]
    assert len(a.instances) > 0
    t = float(np.median([i["score"] for i in a.instances]))
    cut = Segmenter.from_checkpoint(run["ckpt"], CONFIG, _args(run["root"]), score_threshold=t)(gray)
    assert 0 < len(cut.instances) < len(a.instances)
    assert all(i["score"] >= t for i in cut.instances) and all(s["score"] >= t for s in cut.segments)
    # max_image_side: post-processed at 40 px, mapped back to the image's size
    small = Segmenter.from_checkpoint(run["ckpt"], CONFIG, _args(run["root"]), max_image_side=40)(gray)
    assert small.panoptic.shape == gray.shape and small.semantic.shape == gray.shape
    assert len(small.instances) == len(a.instances) and small.instances[0]["mask"].shape == gray.shape
    assert small.overlay().size[0] > gray.shape[1]  # with the legend on the right
