"""The two-stage inference path (one classifier call per batch) and no-object point training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitp.classifiers import GlimpseSettings, PointClassifier, PointViT
from vitp.module import ViTPModule
from vitp.pipeline import TwoStagePipeline
from vitp.postprocess import PostProcessConfig
from vitp.proposal_geometry import point_components
from vitp.proposers import OracleProposer
from vitp.settings import InferenceSettings
from vitp.structures import Batch, DatasetInfo, PointMasks, Proposals, Target
from vitp.training import ProposalPoints
from vitp.training.point_targets import ground_truth_point_masks, matched_proposal_index, proposal_point_targets

OBJECTNESS = InferenceSettings(keep_rule="objectness")
MASKS = GlimpseSettings(window=8, masks=True)

INFO = DatasetInfo(("a", "b", "c"), (1, 5, 9), (True, True, False))
TASKS = ("semantic", "instance", "panoptic")


def make_batch() -> Batch:
    """Two 16x16 images in a 16x20 frame: a stuff background, a thing square, a crowd square."""
    targets = []
    for i in range(2):
        masks = torch.zeros(3, 16, 20, dtype=torch.bool)
        masks[0, :, :16] = True
        masks[1, 2:8, 2:8] = True
        masks[2, 10:14, 10:14] = True
        masks[0] &= ~(masks[1] | masks[2])
        segments = torch.full((16, 16), -1)
        for k in range(3):
            segments[masks[k, :, :16]] = k
        targets.append(Target(masks=masks, labels=torch.tensor([2, i, 0]), is_crowd=torch.tensor([False, False, True]),
                              segments=segments, image_id=i, file_name=f"{i}.jpg", orig_size=(16, 16),
                              valid_size=(16, 16)))
    return Batch(images=torch.randn(2, 3, 16, 20), targets=targets)


def tiny_classifier(num_classes: int = 3) -> PointViT:
    torch.manual_seed(0)
    return PointViT(num_classes, model_name="vit_tiny_patch16_224", image_size=32, point_encoding="sample_pos_embed",
                    model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}).eval()


class CountingClassifier(PointClassifier):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


class TaskConditionedOracle(OracleProposer):
    task_conditioned = True


def test_one_classifier_call_per_batch_for_every_task_and_the_extra_points():
    batch = make_batch()
    clf = CountingClassifier(tiny_classifier())
    pipe = TwoStagePipeline(TaskConditionedOracle(num_classes=3), clf, 3, INFO.thing_mask(), TASKS,
                            ("vitp", "proposer", "oracle"))
    extra = torch.rand(2, 7, 2) * 2 - 1
    out = pipe(batch, extra_points=extra)
    assert clf.calls == 1  # three task groups, the extra points: one patch pass
    assert set(out.predictions) == {"vitp", "proposer", "oracle"}
    for preds in out.predictions.values():
        assert all(p.semantic is not None and p.panoptic is not None and p.instance is not None for p in preds)
    # one-way attention: the extra points' logits do not depend on the proposals' points
    alone = clf.inner(batch.images, extra, batch.valid_tensor())
    torch.testing.assert_close(out.extra_point_logits, alone, rtol=1e-4, atol=1e-5)
    # the oracle masks with their own classes reproduce the ground truth
    assert out.predictions["proposer"][0].panoptic.labels.sort().values.tolist() == [0, 0, 2]  # crowd too


def test_variants_can_be_restricted_per_call():
    pipe = TwoStagePipeline(OracleProposer(num_classes=3), tiny_classifier(), 3, INFO.thing_mask(), TASKS,
                            ("vitp", "proposer", "oracle"))
    out = pipe(make_batch(), variants=("vitp",))
    assert set(out.predictions) == {"vitp"} and out.extra_point_logits is None


def test_proposal_point_targets_label_matches_no_object_and_crowd():
    batch = make_batch()
    logits = torch.full((2, 4, 8, 10), -10.0)  # proposals at half resolution of the 16x20 frame
    logits[:, 0, 1:4, 1:4] = 10.0   # the thing square (IoU 1 at this resolution)
    logits[:, 1, 5:7, 5:7] = 10.0   # the crowd square
    logits[:, 2, 0:2, 6:8] = 10.0   # a small piece of background: no match
    logits[:, 3, 0:8, 0:2] = 10.0   # padding columns only partly: a strip of background, no match
    logits[:, 0, 2, 2] = 12.0       # the inference point is the peak
    points, labels = proposal_point_targets(Proposals(mask_logits=logits), batch, num_classes=3)
    assert points.shape == (2, 4, 2)
    assert labels[:, 0].tolist() == [0, 1]          # each image's thing class
    assert labels[:, 1].tolist() == [-1, -1]        # crowd: ignored
    assert labels[:, 2].tolist() == [3, 3] and labels[:, 3].tolist() == [3, 3]  # no object
    # the peak cell (2, 2) of an 8x8-cell valid region: centre at 2.5 / 8 of the image
    torch.testing.assert_close(points[0, 0], torch.tensor([2 * 2.5 / 8 - 1, 2 * 2.5 / 8 - 1]))


def _proposal_targets(module: ViTPModule, batch: Batch):
    targets = module.point_supervision(batch, module.pipeline)
    return targets.points, targets.labels, targets.masks


def test_no_object_training_adds_a_class_and_proposal_points():
    module = ViTPModule(OracleProposer(num_classes=3, label_noise=0.0), tiny_classifier(None).train(),
                        dataset_info=INFO, point_supervision=ProposalPoints(), inference=OBJECTNESS)
    assert module.classifier.num_classes == 4
    batch = make_batch()
    batch.points = torch.zeros(2, 5, 2)
    batch.point_labels = torch.tensor([[2, 2, 0, -1, -1], [1, 2, -1, -1, -1]])
    points, labels, masks = _proposal_targets(module, batch)
    assert masks is None  # the classifier does not read masks
    assert points.shape[1] == 5 + 3  # oracle masks match themselves; the crowd segment is ignored
    assert [sorted(row) for row in labels[:, 5:].tolist()] == [[-1, 0, 2], [-1, 1, 2]]
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert module.classifier.head.weight.grad is not None


def test_mask_aware_classifier_gets_each_point_mask_in_training_and_inference():
    torch.manual_seed(0)
    clf = PointViT(None, model_name="vit_tiny_patch16_224", image_size=32, point_encoding="sample_pos_embed",
                   glimpse=MASKS,
                   model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}).train()
    module = ViTPModule(OracleProposer(num_classes=3, label_noise=0.0), clf, dataset_info=INFO,
                        point_supervision=ProposalPoints(), inference=OBJECTNESS)
    batch = make_batch()
    # points on the stuff background (0, 0), in the thing square (pixel 4, 4) and on padding (-1)
    thing = 2 * 4.5 / 16 - 1
    batch.points = torch.tensor([[[-0.97, -0.97], [thing, thing]]] * 2)
    batch.point_labels = torch.tensor([[2, 0], [2, -1]])
    points, labels, masks = _proposal_targets(module, batch)
    assert masks is not None and masks.index.shape == points.shape[:2]
    assert masks.index[:, :2].tolist() == [[0, 1], [0, 1]]       # the ground-truth segment under each point
    for i in range(2):                                           # proposal points: the proposals, after the GT masks
        proposal = masks.masks[i][masks.index[i, 2]]
        assert proposal.shape == (16, 16) and proposal.dtype == torch.bool
        assert (proposal == batch.targets[i].masks[0, :, :16]).all()  # the oracle's first proposal is segment 0
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert module.classifier.point_glimpse.proj.weight.grad.abs().sum() > 0
    module.eval()
    out = module.pipeline(batch, extra_points=batch.points,
                          extra_point_masks=ground_truth_point_masks(batch, batch.points))
    assert out.extra_point_logits.shape[:2] == (2, 2) and "vitp" in out.predictions
    with pytest.raises(ValueError, match="extra_point_masks"):
        module.pipeline(batch, extra_points=batch.points)


def test_objectness_keep_rule_reaches_postprocessing():
    module = ViTPModule(OracleProposer(num_classes=3), tiny_classifier(None), dataset_info=INFO,
                        inference=InferenceSettings(keep_rule="objectness", keep_threshold=0.3))
    assert module.pipeline.config == PostProcessConfig(keep_rule="objectness", keep_threshold=0.3)


def test_fuse_objectness_switch_keeps_the_proposer_objectness():
    clf = tiny_classifier(4)  # K + 1 outputs, as after no-object training
    batch = make_batch()
    proposer = OracleProposer(num_classes=3, label_noise=0.5, seed=3, logit_scale=0.5)  # unsure proposer
    common = (proposer, clf, 3, INFO.thing_mask(), ("semantic",), ("vitp", "proposer"))
    fused = TwoStagePipeline(*common, InferenceSettings(fusion_alpha=0.4), point_no_object=True)
    kept = TwoStagePipeline(*common, InferenceSettings(fusion_alpha=0.4, fuse_objectness=False), point_no_object=True)
    proposals = fused.propose(batch, "semantic")
    logits, _ = fused.classify(batch, [proposals])
    p_kept = kept.variant_probs(proposals, logits[0], ("vitp", "proposer"))
    torch.testing.assert_close(p_kept["vitp"][..., -1], p_kept["proposer"][..., -1])
    p_fused = fused.variant_probs(proposals, logits[0], ("vitp",))
    assert not torch.allclose(p_fused["vitp"][..., -1], p_kept["proposer"][..., -1])


def test_matched_proposal_index_moves_points_to_the_proposal_of_their_segment():
    gt = torch.zeros(3, 8, 8, dtype=torch.bool)
    gt[0, :4], gt[1, 4:, :4], gt[2, 4:, 4:] = True, True, True
    proposals = torch.zeros(2, 8, 8, dtype=torch.bool)
    proposals[0, 5:, :4] = True    # 3/4 of segment 1: IoU 0.75
    proposals[1, 7:, 7:] = True    # 1/16 of segment 2: IoU 0.0625, no match
    masks = PointMasks([torch.cat([gt, proposals])], torch.tensor([[0, 1, 2, -1, 1]]))
    index = matched_proposal_index(masks.index[0], proposals, gt, offset=3, iou_threshold=0.5)
    assert index.tolist() == [0, 3, 2, -1, 3]
    assert matched_proposal_index(masks.index[0], proposals, gt, offset=3, iou_threshold=0.8).tolist() == [0, 1, 2, -1, 1]


def test_training_on_proposal_masks_reads_the_matched_proposal():
    torch.manual_seed(0)
    clf = PointViT(None, model_name="vit_tiny_patch16_224", image_size=32, point_encoding="sample_pos_embed",
                   glimpse=MASKS,
                   model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}).train()
    with pytest.raises(ValueError, match="mask-aware"):
        ViTPModule(OracleProposer(num_classes=3), tiny_classifier(None), dataset_info=INFO,
                   point_supervision=ProposalPoints(read_proposal_masks=True))
    module = ViTPModule(OracleProposer(num_classes=3, label_noise=0.0), clf, dataset_info=INFO,
                        point_supervision=ProposalPoints(images=1, read_proposal_masks=True), inference=OBJECTNESS)
    batch = make_batch()
    thing = 2 * 4.5 / 16 - 1
    batch.points = torch.tensor([[[-0.97, -0.97], [thing, thing]]] * 2)
    batch.point_labels = torch.tensor([[2, 0], [2, 1]])
    points, labels, masks = _proposal_targets(module, batch)
    assert masks.index[1, :2].tolist() == [0, 1]  # image 1 has no proposals: exact masks
    assert (masks.index[0, :2] >= 3).all()        # image 0: after its 3 ground-truth masks, a proposal
    for p, segment in ((0, 0), (1, 1)):
        read = masks.masks[0][masks.index[0, p]]
        assert (read == batch.targets[0].masks[segment, :, :16]).all()  # the oracle proposal of that segment
    assert torch.isfinite(module.training_step(batch, 0))


def test_mask_jitter_reaches_the_ground_truth_masks_in_training_only():
    clf = PointViT(None, model_name="vit_tiny_patch16_224", image_size=32, point_encoding="sample_pos_embed",
                   glimpse=MASKS,
                   model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}).train()
    with pytest.raises(ValueError, match="mask_jitter"):
        ProposalPoints(mask_jitter=1.5)
    module = ViTPModule(OracleProposer(num_classes=3, label_noise=0.0), clf, dataset_info=INFO,
                        point_supervision=ProposalPoints(mask_jitter=1.0), inference=OBJECTNESS)
    batch = make_batch()
    batch.points = torch.tensor([[[2 * 4.5 / 16 - 1] * 2]] * 2)
    batch.point_labels = torch.tensor([[0], [1]])
    torch.manual_seed(0)
    _, _, masks = _proposal_targets(module, batch)
    exact = [t.masks[:, :16, :16] for t in batch.targets]
    assert any(not torch.equal(masks.masks[i][:3], exact[i]) for i in range(2))
    assert torch.equal(ground_truth_point_masks(batch, batch.points).masks[0], exact[0])  # evaluation: exact


def test_point_components_keep_the_part_of_each_mask_under_its_point():
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True      # the segment ...
    masks[0, 12:14, 12:14] = True  # ... and stray pixels far away
    masks[0, 6, 6] = True          # a diagonal neighbour: 8-connected to the segment
    masks[1, 8:10, 8:10] = True    # a point that misses its mask: kept whole
    masks[1, 0, 0] = True
    at = lambda r, c: [2 * (r + 0.5) / 16 - 1, 2 * (c + 0.5) / 16 - 1]  # noqa: E731
    points = torch.tensor([at(3, 3), at(4, 4), at(0, 0)])
    cut = point_components(masks, points)
    expected = masks[0].clone()
    expected[12:14, 12:14] = False
    assert torch.equal(cut[0], expected)
    assert torch.equal(cut[1], masks[1]) and torch.equal(cut[2], masks[2])


def test_mask_aware_classifier_reads_the_proposal_part_under_its_point():
    """A proposal with stray pixels far away reads, by default, the part under its point; the glimpse's
    box then frames the segment alone."""
    torch.manual_seed(0)
    clf = PointViT(3, model_name="vit_tiny_patch16_224", image_size=32, point_encoding="sample_pos_embed",
                   glimpse=GlimpseSettings(window=8, masks=True, fit_box=True),
                   model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}).eval()
    seen = []
    clf.point_glimpse.register_forward_pre_hook(lambda mod, args: seen.append(args[3]))
    logits = torch.full((1, 1, 16, 20), -10.0)
    logits[0, 0, 2:8, 2:8] = 10.0
    logits[0, 0, 3, 3] = 12.0
    logits[0, 0, 14, 14] = 10.0   # a stray pixel
    batch = make_batch()
    batch = Batch(batch.images[:1], batch.targets[:1])
    for components, stray in ((True, False), (False, True)):
        pipe = TwoStagePipeline(OracleProposer(num_classes=3), clf, 3, INFO.thing_mask(), ("semantic",), ("vitp",),
                                InferenceSettings(point_mask_components=components))
        pipe.classify(batch, [Proposals(mask_logits=logits)])
        read = seen[-1].masks[0][seen[-1].index[0, 0]]
        assert read[2:8, 2:8].all() and bool(read[14, 14]) == stray


def test_prediction_result_reads_a_task_by_its_typed_name():
    """``Prediction.result(task)`` replaces ``getattr(pred, task)``: the field for a known task, an
    error naming the tasks for any other name (getattr would have returned an unrelated attribute)."""
    from vitp.structures import TASKS, Prediction

    semantic = torch.zeros(2, 3, dtype=torch.long)
    pred = Prediction(semantic=semantic)
    assert pred.result("semantic") is semantic
    assert pred.result("panoptic") is None and pred.result("instance") is None
    assert TASKS == ("semantic", "instance", "panoptic")
    with pytest.raises(ValueError, match="unknown task 'result'"):
        pred.result("result")  # type: ignore[arg-type]


def test_shared_logit_views_change_nothing_and_upsample_once():
    """``TwoStagePipeline.__call__`` upsamples each image's mask logits once for the classifier's point
    masks and every variant's post-processing (``logit_views``): the classifier's logits and every
    prediction equal those computed separately, and the upsampled logits are built once per image."""
    import torch.nn.functional as F

    from vitp import upsampling

    torch.manual_seed(0)
    clf = PointViT(3, model_name="vit_tiny_patch16_224", image_size=32, point_encoding="sample_pos_embed",
                   glimpse=GlimpseSettings(window=8, masks=True, fit_box=True),
                   model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}).eval()
    batch = make_batch()
    logits = torch.randn(2, 5, 8, 10) * 4  # mask logits at half the 16 x 20 frame
    proposer = OracleProposer(num_classes=3)
    pipe = TwoStagePipeline(proposer, clf, 3, INFO.thing_mask(), TASKS, ("proposer", "vitp", "oracle"))
    props = [Proposals(mask_logits=logits, class_logits=torch.randn(2, 5, 4))]
    pipe.propose = lambda b, task: props[0]
    calls = []
    real = F.interpolate

    def counting(*args, **kwargs):
        calls.append(kwargs.get("size"))
        return real(*args, **kwargs)

    with torch.no_grad():
        separate_logits, _ = pipe.classify(batch, props)
        separate = pipe.postprocess(batch, props, separate_logits, ("proposer", "vitp", "oracle"))
        upsampling.F.interpolate = counting
        try:
            shared = pipe(batch)
        finally:
            upsampling.F.interpolate = real
    assert calls.count((16, 16)) == len(batch)  # once per image: masks, 3 variants, 3 tasks
    for name in ("proposer", "vitp", "oracle"):
        for a, b in zip(separate[name], shared.predictions[name]):
            assert torch.equal(a.semantic, b.semantic)
            assert torch.equal(a.panoptic.segments, b.panoptic.segments)
            assert torch.equal(a.instance.masks, b.instance.masks) and torch.equal(a.instance.scores, b.instance.scores)


def test_kept_upsampled_logits_serve_query_subsets_bit_for_bit():
    """``UpsampledLogits.full`` is built once; a subset of queries read from it equals upsampling
    that subset alone."""
    import torch.nn.functional as F

    from vitp.upsampling import UpsampledLogits

    low = torch.randn(7, 13, 17) * 4
    lazy = UpsampledLogits(low, (50, 61))
    full = lazy.band(0, 50)
    assert lazy.band(0, 50) is full and torch.equal(full, F.interpolate(low[None], size=(50, 61), mode="bilinear")[0])
    q = torch.tensor([1, 4, 6])
    assert torch.equal(lazy.band(0, 50, q), F.interpolate(low[q][None], size=(50, 61), mode="bilinear")[0])
