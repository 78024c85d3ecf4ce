"""Band-wise post-processing (``vitp.postprocess.UpsampledLogits``) gives the results of the old
whole-stack post-processing (``tests/reference_postprocess.py``), and its memory does not grow
with ``Q x H x W``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import reference_postprocess as ref
from test_predict_api import CONFIG, _args, run  # noqa: F401  (the tiny ViT-P fixture)
from vitp import postprocess as new
from vitp.structures import Prediction


def _case(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (), generator=g))

    q, k = randint(1, 30), randint(2, 9)
    h, w = randint(4, 24), randint(4, 24)
    frame = (h * 4, w * 4)  # mask logits at 1/4 of the padded input, as Mask2Former's
    valid = (randint(frame[0] // 2, frame[0] + 1), randint(frame[1] // 2, frame[1] + 1))
    # mostly up-sampled outputs (the large-photo case), some smaller or equal ones
    scale = [0.5, 1.0, 1.7, 3.3, 6.0][seed % 5]
    orig = (max(1, round(valid[0] * scale)), max(1, round(valid[1] * scale)))
    logits = torch.randn(q, h, w, generator=g) * 4
    probs = (torch.randn(q, k + 1, generator=g) * 3).softmax(-1)
    is_thing = torch.rand(k, generator=g) < 0.5
    config = dict(keep_rule=["objectness", "reference"][seed % 2], keep_threshold=0.3,
                  object_mask_threshold=0.2, overlap_threshold=[0.0, 0.5, 0.8][seed % 3],
                  topk_instances=[100, 7][seed % 2])
    return dict(logits=logits, probs=probs, is_thing=is_thing, valid=valid, frame=frame, orig=orig, config=config)


def _assert_same(a: Prediction, b: Prediction) -> None:
    assert torch.equal(a.semantic, b.semantic)
    assert torch.equal(a.panoptic.segments, b.panoptic.segments)
    assert torch.equal(a.panoptic.labels, b.panoptic.labels)
    assert torch.equal(a.panoptic.scores, b.panoptic.scores)
    assert torch.equal(a.instance.labels, b.instance.labels)
    assert torch.equal(a.instance.masks, b.instance.masks)
    # mask quality is now summed in float64 over bands (was one float32 sum): rounding only
    torch.testing.assert_close(a.instance.scores, b.instance.scores, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk", [3000, 1 << 22])
def test_band_wise_equals_reference_on_random_cases(chunk: int):
    for seed in range(20 if chunk < 1 << 20 else 40):
        c = _case(seed)
        old = ref.infer(ref.crop_and_resize(c["logits"], c["valid"], c["orig"], c["frame"]), c["probs"],
                        c["is_thing"], config=ref.PostProcessConfig(**c["config"]))
        lazy = new.crop_logits(c["logits"], c["valid"], c["orig"], c["frame"], chunk_elements=chunk)
        out = new.infer(lazy, c["probs"], c["is_thing"], config=new.PostProcessConfig(**c["config"]))
        _assert_same(old, out)


def test_bands_equal_interpolate_and_stay_small():
    low = torch.randn(50, 64, 48) * 3
    lazy = new.UpsampledLogits(low, (1500, 1000), chunk_elements=1 << 20)
    full = torch.nn.functional.interpolate(low[None], size=(1500, 1000), mode="bilinear", align_corners=False)[0]
    seen = 0
    for y0, y1 in lazy.bands():
        band = lazy.band(y0, y1)
        assert band.numel() <= 1 << 20
        assert torch.equal(band, full[:, y0:y1])
        seen += y1 - y0
    assert seen == 1500
    assert torch.equal(lazy.binary(), full > 0)


def test_score_threshold_drops_segments_and_instances():
    c = _case(3)
    lazy = new.crop_logits(c["logits"], c["valid"], c["orig"], c["frame"])
    base = new.infer(lazy, c["probs"], c["is_thing"], config=new.PostProcessConfig(**c["config"]))
    t = float(base.instance.scores.median())
    cut = new.infer(lazy, c["probs"], c["is_thing"], config=new.PostProcessConfig(**c["config"], score_threshold=t))
    assert len(cut.instance.scores) == int((base.instance.scores >= t).sum()) < len(base.instance.scores)
    assert torch.equal(cut.instance.masks, base.instance.masks[: len(cut.instance.scores)])
    assert bool((cut.panoptic.scores >= t).all())
    high = new.PostProcessConfig(**c["config"], score_threshold=1.01)
    none = new.infer(lazy, c["probs"], c["is_thing"], config=high)
    assert len(none.panoptic.labels) == 0 and len(none.instance.scores) == 0
    assert bool((none.panoptic.segments == -1).all())


def test_resize_prediction_is_nearest_neighbour():
    c = _case(1)
    lazy = new.crop_logits(c["logits"], c["valid"], (30, 20), c["frame"])
    pred = new.infer(lazy, c["probs"], c["is_thing"], config=new.PostProcessConfig(**c["config"]))
    big = new.resize_prediction(pred, (75, 41))
    nearest = torch.nn.functional.interpolate(pred.semantic[None, None].float(), size=(75, 41), mode="nearest")
    assert torch.equal(big.semantic, nearest[0, 0].long())
    assert big.panoptic.segments.shape == (75, 41)
    # instance masks keep their post-processing size; each is resized when read
    inst = big.instance
    assert inst.masks is pred.instance.masks and inst.size == (75, 41) and len(inst.scores) > 0
    masks = torch.nn.functional.interpolate(pred.instance.masks[None].float(), size=(75, 41), mode="nearest")[0] > 0
    assert torch.equal(inst.full_masks(), masks)
    for i in range(len(inst.scores)):
        assert torch.equal(inst.mask(i), masks[i]) and torch.equal(inst.mask(i, transposed=True), masks[i].t())


def test_label_areas_boxes_equal_mask_by_mask():
    from vitp.export import label_areas_boxes
    from vitp.points import mask_boxes

    g = torch.Generator().manual_seed(0)
    for h, w, n in [(1, 1, 1), (7, 300, 5), (300, 7, 3), (64, 48, 12)]:
        labels = torch.randint(-1, n + 1, (h, w), generator=g)  # -1 and n are ignored
        labels[: h // 2] = torch.where(labels[: h // 2] == 1, 0, labels[: h // 2])  # some value absent
        area, boxes = label_areas_boxes(labels, n, band_pixels=97)
        masks = labels[None] == torch.arange(n)[:, None, None]
        assert torch.equal(area, torch.count_nonzero(masks, dim=(1, 2)))
        present = area > 0
        assert torch.equal(boxes[present], mask_boxes(masks)[present])
        big = max(h, w)
        assert torch.equal(boxes[~present], torch.tensor([big, big, -1, -1]).expand(int((~present).sum()), 4))
        assert area.dtype == boxes.dtype == torch.long


def test_image_record_of_resized_instances_equals_full_size_masks():
    """The record's RLE, area and box of instances held at post-processing size equal those of the
    materialised full-size masks, computed the old way (whole stack, ``count_nonzero``, ``mask_boxes``)."""
    from vitp.export import image_record
    from vitp.metrics.instance import encode_masks
    from vitp.points import mask_boxes
    from vitp.structures import DatasetInfo, InstancePrediction

    c = _case(4)
    k = c["probs"].shape[1] - 1
    info = DatasetInfo(tuple(f"c{i}" for i in range(k)), tuple(range(1, k + 1)), tuple(bool(t) for t in c["is_thing"]))
    lazy = new.crop_logits(c["logits"], c["valid"], (23, 31), c["frame"])
    pred = new.resize_prediction(new.infer(lazy, c["probs"], c["is_thing"],
                                           config=new.PostProcessConfig(**c["config"])), (97, 64))
    inst = pred.instance
    full = inst.full_masks()
    assert len(inst.scores) > 0 and full.shape[-2:] == (97, 64)
    _, record = image_record(pred, info)
    dense = Prediction(pred.semantic, pred.panoptic, InstancePrediction(full, inst.labels, inst.scores))
    assert image_record(dense, info)[1] == record
    boxes = mask_boxes(full).tolist()
    for r, rle, a, (y0, x0, y1, x1) in zip(record["instances"], encode_masks(full),
                                            torch.count_nonzero(full, dim=(1, 2)).tolist(), boxes):
        assert r["segmentation"]["counts"] == rle["counts"].decode("ascii") and r["area"] == a
        assert r["bbox"] == ([x0, y0, x1 - x0 + 1, y1 - y0 + 1] if a else [0, 0, 0, 0])


_MEMORY_CHILD = """
import json, resource, torch
from vitp.postprocess import PostProcessConfig, crop_logits, infer
torch.manual_seed(0)
q, k = 50, 12
logits, probs = torch.randn(q, 64, 48) * 4, (torch.randn(q, k + 1) * 3).softmax(-1)
is_thing = torch.arange(k) < 6
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pred = infer(crop_logits(logits, (256, 192), (2000, 1500), (256, 256)), probs, is_thing,
             config=PostProcessConfig(keep_rule="objectness", keep_threshold=0.0, score_threshold=0.2))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"delta_mb": (after - before) / 1024, "instances": len(pred.instance.scores)}))
"""


def test_peak_memory_does_not_grow_with_queries_times_pixels():
    """3 MP, 50 queries: one float copy of all upsampled logits alone would be 600 MB; the
    outputs (two int64 maps, int32 winners, kept instance masks) are what remains."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    pixels_mb = 2000 * 1500 / 2**20
    budget = pixels_mb * (8 + 8 + 4 + 1 + result["instances"]) + 400  # + the band being built
    assert result["delta_mb"] < budget, result


_SEGMENTER_CHILD = """
import json, os, resource, sys, time
import numpy as np
from vitp import Segmenter
spec = json.loads(sys.argv[1])
os.chdir(spec["workdir"])
seg = Segmenter.from_checkpoint(spec["ckpt"], spec["config"], spec["args"])
h, w = spec["size"]
blocks = np.random.default_rng(0).integers(0, 256, (h // 50 + 1, w // 50 + 1, 3), dtype=np.uint8)
image = np.ascontiguousarray(np.repeat(np.repeat(blocks, 50, 0), 50, 1)[:h, :w])  # smooth random photo
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
result = seg(image)
masks = [r["mask"].shape for r in result.instances[:3]]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"delta_mb": (peak - before) / 1024, "seconds": time.perf_counter() - t0,
                  "instances": len(result.instances), "mask_shapes": masks, "panoptic": result.panoptic.shape}))
"""


def _segmenter_peak(run, size: tuple[int, int]) -> dict:
    spec = {"workdir": str(run["workdir"]), "ckpt": str(run["ckpt"]), "config": str(CONFIG),
            "args": _args(run["root"]), "size": list(size)}
    out = subprocess.run([sys.executable, "-c", _SEGMENTER_CHILD, json.dumps(spec)], capture_output=True,
                         text=True, check=True, cwd=run["workdir"])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _segmenter_budget_mb(size: tuple[int, int], instances: int) -> float:
    """What a ``Segmenter`` call may add for a photo of ``size`` with the default ``max_image_side``
    (1333): per pixel, three ``int64`` maps (semantic, panoptic segments, their ids) and one more
    while they are built, the RGB input, one full-size mask being encoded (bool + its transpose);
    at 1333 px the kept instances' masks, one band of logits (about 300 MB) and the model's run."""
    pixels_mb = size[0] * size[1] / 2**20
    return pixels_mb * (4 * 8 + 3 + 2) + (1333 * 1000 / 2**20) * instances + 450


def test_segmenter_peak_memory_on_a_large_photo_is_bounded(run):
    """A 2400x1800 photo through ``vitp.Segmenter`` (tiny model, post-processed at 1333 px): the
    call adds far less than one full-size mask per instance (100 x 4.3 MP = 430 MB), let alone an
    int64 copy of them (3.5 GB, what ``count_nonzero(masks, dim=...)`` made)."""
    size = (1800, 2400)
    result = _segmenter_peak(run, size)
    assert result["panoptic"] == list(size) and all(s == list(size) for s in result["mask_shapes"]), result
    assert result["instances"] > 0, result
    assert result["delta_mb"] < _segmenter_budget_mb(size, result["instances"]), result


@pytest.mark.slow
def test_segmenter_peak_memory_on_a_48_mp_photo_is_bounded(run):
    size = (6000, 8000)
    result = _segmenter_peak(run, size)
    assert result["delta_mb"] < _segmenter_budget_mb(size, result["instances"]), result
