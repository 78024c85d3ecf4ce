"""What is ruled out at mask resolution (``vitp.rule_out``: panoptic candidates, semantic classes,
instance queries per band) changes nothing: the results equal the whole-stack reference
(``tests/reference_postprocess.py``), the band-wise code before (``reference_postprocess_bands.py``)
and the same code reading everything, on random cases built so that much is ruled out; and the
bounds they rest on hold for every upsampled pixel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import reference_postprocess as ref
from vitp import postprocess as new
from vitp import postprocess_parts as parts
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
    monkeypatch.setattr(parts, "LOCAL_MIN_ELEMENTS", 0)  # every case takes the local path
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
    assert torch.equal(lazy.upper_bound(torch.tensor([4, 1])), upper[[4, 1]]) and torch.equal(lazy.upper_bound(), upper)


@pytest.mark.parametrize("local", [True, False])
def test_equals_the_previous_band_implementation(local: bool, monkeypatch):
    """Every task, both paths (local competition and one whole-image pass), against the band-wise
    code before this change (``tests/reference_postprocess_bands.py``), bit for bit."""
    import reference_postprocess_bands as previous

    monkeypatch.setattr(parts, "LOCAL_MIN_ELEMENTS", 0 if local else 1 << 62)
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


def _semantic_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Blob logits and peaked class distributions over many classes (most queries "no object"),
    as a proposer trained on COCO gives them; outputs 4-7x the mask size."""
    g = torch.Generator().manual_seed(seed)
    q, k = int(torch.randint(5, 80, (), generator=g)), int(torch.randint(2, 160, (), generator=g))
    h, w = int(torch.randint(8, 40, (), generator=g)), int(torch.randint(8, 40, (), generator=g))
    logits = _blobs(q, h, w, g)
    class_logits = torch.randn(q, k + 1, generator=g)
    class_logits[torch.arange(q), torch.randint(0, k, (q,), generator=g)] += float(torch.rand((), generator=g)) * 10
    class_logits[:, -1] += torch.where(torch.rand(q, generator=g) < 0.6, 8.0, 0.0)
    scale = 4 + 3 * float(torch.rand((), generator=g))  # at least 4x: few classes are ruled out too
    return logits, class_logits.softmax(-1), (round(h * scale), round(w * scale))


def test_ruled_out_semantic_classes_change_nothing(monkeypatch):
    """Semantic classes left out per band of rows (``rule_out.class_competition``) change no pixel:
    equal to the same code reading every class and to the band-wise code before the change, on
    cases where bands keep one, two or three classes (other matrix-product kernels) or more."""
    import reference_postprocess_bands as previous
    from vitp.rule_out import class_competition

    monkeypatch.setattr(parts, "LOCAL_MIN_ELEMENTS", 0)
    kept_sizes: set[int] = set()
    ruled_out = total = 0
    for seed in range(40):
        logits, probs, size = _semantic_case(seed)
        chunk = [3000, 20000, BAND_ELEMENTS][seed % 3]
        lazy = UpsampledLogits(logits, size, chunk_elements=chunk)
        out = new.semantic_inference(lazy, probs)
        every = new.infer(UpsampledLogits(logits, size, chunk_elements=chunk), probs, torch.zeros(0, dtype=torch.bool),
                          ("semantic",), new.PostProcessConfig(rule_out=False)).semantic
        before = previous.infer(previous.UpsampledLogits(logits, size, chunk_elements=chunk), probs,
                                torch.zeros(0, dtype=torch.bool), ("semantic",)).semantic
        assert torch.equal(out, every) and torch.equal(out, before), seed
        part = new._Semantic(lazy, probs)
        for y0, y1 in lazy.bands(len(probs)):
            classes = part.band_classes(y0, y1)
            kept_sizes.add(min(len(classes), 4))
            ruled_out += probs.shape[1] - 1 - len(classes)
            total += probs.shape[1] - 1
    assert kept_sizes == {1, 2, 3, 4}, kept_sizes  # every path was taken
    assert ruled_out > total // 2, (ruled_out, total)
    # the bounds are sound where they are tight: the class each pixel takes may win its cell row
    logits, probs, size = _semantic_case(3)
    lazy = UpsampledLogits(logits, size)
    may_win = class_competition(lazy, probs[:, :-1])
    out = new.infer(lazy, probs, torch.zeros(0, dtype=torch.bool), ("semantic",), new.PostProcessConfig(rule_out=False)).semantic
    rows = lazy._y[0]
    assert bool(may_win[out, rows[:, None].expand_as(out)].all())


def test_a_class_sum_does_not_depend_on_the_classes_beside_it():
    """``rule_out.class_scores`` of a few classes equals, bit for bit, their rows among all classes
    (the matrix product rounds a row by how many rows it computes; ``GEMM_ROWS`` pads a subset),
    with 1, 2 and 16 threads, for COCO's and ADE20K's numbers of classes."""
    from vitp.rule_out import class_scores

    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for k in (133, 150, 40):
            probs = (torch.randn(100, k, generator=g) * 3).softmax(-1)
            sigmoid = torch.rand(100, 15, 1333, generator=g)
            for n in (1, 2, 16):
                torch.set_num_threads(n)
                every = class_scores(probs, sigmoid)
                for size in [1, 2, 3, 4, 5, 7, 9, 11, 13, 17, 18, 25, 26, 33, k - 1]:
                    classes = torch.randperm(k, generator=g)[:size].sort().values
                    assert torch.equal(class_scores(probs, sigmoid, classes), every[classes]), (k, n, size)
    finally:
        torch.set_num_threads(threads)


def test_instance_queries_read_only_where_their_masks_may_reach():
    """The instance part reads, per band of rows, only the queries whose mask (logit > 0) may reach
    it: masks, labels and scores equal those of reading every query, bit for bit, with two threads
    (a lone row's sum is then split between them unless summed as among others) and one."""
    threads = torch.get_num_threads()
    lone = pruned = 0
    try:
        for seed in range(12):
            torch.set_num_threads(1 + seed % 2)
            g = torch.Generator().manual_seed(seed)
            q = int(torch.randint(3, 30, (), generator=g))
            logits = _blobs(q, 30, 20, g) - 4  # small blobs: each query's mask reaches a few bands
            probs = (torch.randn(q, 6, generator=g) * 3).softmax(-1)
            is_thing = torch.tensor([True, True, False, True, True])
            tasks = [("instance",), ("instance", "panoptic"), ("instance", "semantic", "panoptic")][seed % 3]
            out, every = (new.infer(UpsampledLogits(logits, (600, 400), chunk_elements=1 << 20), probs, is_thing, tasks,
                                    new.PostProcessConfig(rule_out=r, object_mask_threshold=0.2)) for r in (True, False))
            for field in ("masks", "labels", "scores"):
                assert torch.equal(getattr(out.instance, field), getattr(every.instance, field)), (seed, field)
            part = new._Instance(UpsampledLogits(logits, (600, 400), chunk_elements=1 << 20), probs, is_thing,
                                 new.PostProcessConfig())
            for y0, y1 in part.logits.bands(q):
                n = len(part.band_queries(y0, y1))
                lone += n == 1 and (y1 - y0) * 400 >= 1 << 15  # torch splits a lone row this long
                pruned += len(part.queries) - n
    finally:
        torch.set_num_threads(threads)
    assert lone > 0 and pruned > 0, (lone, pruned)
