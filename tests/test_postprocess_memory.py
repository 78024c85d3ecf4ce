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
    assert big.instance.masks.shape[-2:] == (75, 41) and big.panoptic.segments.shape == (75, 41)


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
