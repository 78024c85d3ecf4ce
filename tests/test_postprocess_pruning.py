"""Panoptic candidates ruled out at mask resolution (``postprocess._can_win``) change nothing: the
results equal the whole-stack reference (``tests/reference_postprocess.py``) on random cases built
so that many candidates are ruled out, and the bounds they rest on hold for every upsampled pixel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import reference_postprocess as ref
from vitp import postprocess as new
from vitp.upsampling import BAND_ELEMENTS, UpsampledLogits


def _blobs(q: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Smooth mask logits as a proposer gives them: one soft blob per query, mostly negative."""
    ys = torch.arange(h, dtype=torch.float)[:, None]
    xs = torch.arange(w, dtype=torch.float)[None, :]
    out = torch.empty(q, h, w)
    for i in range(q):
        cy, cx = float(torch.rand((), generator=g)) * h, float(torch.rand((), generator=g)) * w
        r = 1.0 + float(torch.rand((), generator=g)) * max(h, w) / 3
        peak = float(torch.randn((), generator=g)) * 4 + 3
        out[i] = peak - ((ys - cy) ** 2 + (xs - cx) ** 2) / r**2 * 6
    return out + torch.randn(q, h, w, generator=g) * 0.3


def _case(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    q, k = int(torch.randint(2, 60, (), generator=g)), int(torch.randint(2, 9, (), generator=g))
    h, w = int(torch.randint(4, 32, (), generator=g)), int(torch.randint(4, 32, (), generator=g))
    frame = (h * 4, w * 4)
    valid = (int(torch.randint(frame[0] // 2, frame[0] + 1, (), generator=g)),
             int(torch.randint(frame[1] // 2, frame[1] + 1, (), generator=g)))
    scale = [0.5, 1.0, 1.7, 3.3, 6.0][seed % 5]
    orig = (max(1, round(valid[0] * scale)), max(1, round(valid[1] * scale)))
    probs = (torch.randn(q, k + 1, generator=g) * 3).softmax(-1)
    probs[:, -1] *= 0.2  # most candidates pass the keep rule, as with ViT-P's fused objectness
    probs = probs / probs.sum(-1, keepdim=True)
    config = dict(keep_rule=["objectness", "reference"][seed % 2], keep_threshold=0.3, object_mask_threshold=0.2,
                  overlap_threshold=[0.0, 0.5, 0.8][seed % 3])
    return dict(logits=_blobs(q, h, w, g), probs=probs, is_thing=torch.rand(k, generator=g) < 0.5,
                valid=valid, frame=frame, orig=orig, config=config)


@pytest.mark.parametrize("chunk", [5000, 1 << 22])
def test_ruled_out_candidates_change_nothing(chunk: int, monkeypatch):
    monkeypatch.setattr(new, "LOCAL_MIN_ELEMENTS", 0)  # every case takes the local path
    ruled_out = candidates = 0
    for seed in range(40):
        c = _case(seed)
        old = ref.panoptic_inference(ref.crop_and_resize(c["logits"], c["valid"], c["orig"], c["frame"]), c["probs"],
                                     c["is_thing"], ref.PostProcessConfig(**c["config"]))
        lazy = new.crop_logits(c["logits"], c["valid"], c["orig"], c["frame"], chunk_elements=chunk)
        config = new.PostProcessConfig(**c["config"])
        out = new.panoptic_inference(lazy, c["probs"], c["is_thing"], config)
        assert torch.equal(out.segments, old.segments), seed
        assert torch.equal(out.labels, old.labels) and torch.equal(out.scores, old.scores), seed
        part = new._Panoptic(lazy, c["probs"], c["is_thing"], config)
        scores, _ = c["probs"].max(-1)
        passed = int(((c["probs"].argmax(-1) != c["probs"].shape[1] - 1) & (scores > 0.2)).sum()) \
            if config.keep_rule == "reference" else int((1 - c["probs"][:, -1] > 0.3).sum())
        ruled_out += passed - len(part.queries)
        candidates += passed
    # the cases are built so that the test rules many out (else it would prove nothing)
    assert ruled_out > candidates // 4, (ruled_out, candidates)


@pytest.mark.parametrize("size", [(5, 7), (13, 9), (64, 48), (150, 211), (8, 8)])
def test_bounds_hold_for_every_upsampled_value(size: tuple[int, int]):
    g = torch.Generator().manual_seed(size[0])
    low = torch.randn(6, 8, 8, generator=g) * 5
    lazy = UpsampledLogits(low, size)
    full = F.interpolate(low[None], size=size, mode="bilinear", align_corners=False)[0] if size != (8, 8) else low
    lower, upper = lazy.bounds()
    ys = torch.arange(size[0]) if size == (8, 8) else lazy._y[0]
    xs = torch.arange(size[1]) if size == (8, 8) else UpsampledLogits(low.transpose(1, 2), size[::-1])._y[0]
    cell_lower = lower[:, ys][:, :, xs]
    cell_upper = upper[:, ys][:, :, xs]
    assert bool((cell_lower <= full).all()) and bool((full <= cell_upper).all())
    assert torch.equal(lazy.bounds(torch.tensor([4, 1]))[1], upper[[4, 1]])


@pytest.mark.parametrize("local", [True, False])
def test_equals_the_previous_band_implementation(local: bool, monkeypatch):
    """Every task, both paths (local competition and one whole-image pass), against the band-wise
    code before this change (``tests/reference_postprocess_bands.py``), bit for bit."""
    import reference_postprocess_bands as previous

    monkeypatch.setattr(new, "LOCAL_MIN_ELEMENTS", 0 if local else 1 << 62)
    for seed in range(30):
        c = _case(seed)
        # bands of the same rows in both (multi-band outputs are now read in bands of at most
        # BAND_ELEMENTS): the instance scores' float sums are then taken over the same pixels
        chunk = [5000, BAND_ELEMENTS][seed % 2]
        before = previous.infer(previous.crop_logits(c["logits"], c["valid"], c["orig"], c["frame"], chunk_elements=chunk),
                                c["probs"], c["is_thing"], config=previous.PostProcessConfig(**c["config"]))
        after = new.infer(new.crop_logits(c["logits"], c["valid"], c["orig"], c["frame"], chunk_elements=chunk),
                          c["probs"], c["is_thing"], config=new.PostProcessConfig(**c["config"]))
        assert torch.equal(after.semantic, before.semantic), seed
        for field in ("segments", "labels", "scores"):
            assert torch.equal(getattr(after.panoptic, field), getattr(before.panoptic, field)), (seed, field)
        for field in ("masks", "labels", "scores"):
            assert torch.equal(getattr(after.instance, field), getattr(before.instance, field)), (seed, field)
