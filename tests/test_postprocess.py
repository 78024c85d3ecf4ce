"""Post-processing edge cases (Mask2Former semantics)."""

import torch

import pytest

from vitp.postprocess import (PostProcessConfig, crop_and_resize, infer, instance_inference,
                              panoptic_inference, semantic_inference)

S = 20.0
IS_THING = torch.tensor([True, True, False])  # classes 0, 1 things; 2 stuff


def one_hot_probs(labels, num_classes=3, score=0.99):
    probs = torch.full((len(labels), num_classes + 1), (1 - score) / num_classes)
    for i, label in enumerate(labels):
        probs[i, label] = score
    return probs


def masks_from(*regions, size=(6, 6)):
    logits = torch.full((len(regions), *size), -S)
    for i, (r0, r1, c0, c1) in enumerate(regions):
        logits[i, r0:r1, c0:c1] = S
    return logits


def test_panoptic_no_confident_query_gives_all_void():
    logits = masks_from((0, 6, 0, 6))
    probs = one_hot_probs([0], score=0.5)  # below the 0.8 object-mask threshold
    pred = panoptic_inference(logits, probs, IS_THING)
    assert (pred.segments == -1).all() and len(pred.labels) == 0


def test_panoptic_void_query_dropped_and_uncovered_pixels_void():
    logits = masks_from((0, 3, 0, 3), (3, 6, 3, 6))
    probs = torch.tensor([[0.95, 0.0, 0.0, 0.05], [0.0, 0.0, 0.05, 0.95]])  # second is no-object
    pred = panoptic_inference(logits, probs, IS_THING)
    assert pred.labels.tolist() == [0]
    assert (pred.segments[:3, :3] == 0).all()
    assert (pred.segments[3:, 3:] == -1).all()
    assert (pred.segments[:3, 3:] == -1).all()


def test_panoptic_stuff_of_one_class_merged_things_kept_apart():
    logits = masks_from((0, 3, 0, 3), (3, 6, 3, 6), (0, 3, 3, 6), (3, 6, 0, 3))
    probs = one_hot_probs([2, 2, 0, 0])
    pred = panoptic_inference(logits, probs, IS_THING)
    assert sorted(pred.labels.tolist()) == [0, 0, 2]
    stuff = (pred.labels == 2).nonzero()[0, 0]
    assert (pred.segments[:3, :3] == stuff).all() and (pred.segments[3:, 3:] == stuff).all()
    assert pred.segments[0, 5] != pred.segments[5, 0]


def test_panoptic_overlap_threshold_drops_mostly_hidden_segment():
    # query 1 is mostly covered by the more confident query 0
    logits = masks_from((0, 6, 0, 6), (0, 6, 0, 2))
    probs = torch.stack([one_hot_probs([2], score=0.99)[0], one_hot_probs([0], score=0.9)[0]])
    pred = panoptic_inference(logits, probs, IS_THING, PostProcessConfig(overlap_threshold=0.8))
    assert pred.labels.tolist() == [2]
    assert (pred.segments == 0).all()


def test_semantic_argmax_of_class_weighted_masks():
    logits = masks_from((0, 6, 0, 3), (0, 6, 3, 6))
    probs = one_hot_probs([1, 2])
    sem = semantic_inference(logits, probs)
    assert (sem[:, :3] == 1).all() and (sem[:, 3:] == 2).all()


def test_instance_topk_thing_only_sorted_and_rescored():
    logits = masks_from((0, 3, 0, 3), (3, 6, 3, 6), (0, 6, 0, 6))
    logits[1] = torch.where(logits[1] > 0, torch.tensor(0.5), logits[1])  # weak mask: rescored down
    probs = one_hot_probs([0, 1, 2])
    pred = instance_inference(logits, probs, IS_THING, PostProcessConfig(topk_instances=2))
    assert len(pred.labels) == 2
    assert set(pred.labels.tolist()) <= {0, 1}  # stuff class 2 never an instance
    assert pred.labels[0] == 0 and pred.scores[0] > pred.scores[1]
    assert torch.all(pred.scores[:-1] >= pred.scores[1:])
    assert pred.masks.dtype == torch.bool and pred.masks.shape == (2, 6, 6)


def test_crop_exact_when_valid_region_is_whole_mask_pixels():
    logits = torch.randn(2, 8, 8)
    out = crop_and_resize(logits, (4, 6), (4, 6), frame_size=(8, 8))
    assert torch.equal(out, logits[:, :4, :6])


def test_crop_resizes_from_frame_to_original():
    logits = torch.zeros(1, 4, 4)
    logits[0, :1, :1] = 1.0  # valid region 8x8 of a 16x16 frame = top-left 2x2 mask pixels
    out = crop_and_resize(logits, (8, 8), (16, 16), frame_size=(16, 16))
    assert out.shape == (1, 16, 16)
    assert out[0, 2, 2] > 0.5 and out[0, 12, 12] < 0.5


def test_crop_upsamples_first_when_region_splits_mask_pixels():
    logits = torch.zeros(1, 4, 4)
    logits[0, :1, :1] = 1.0
    out = crop_and_resize(logits, (6, 6), (3, 3), frame_size=(16, 16))  # 1.5 mask pixels
    assert out.shape == (1, 3, 3)
    assert out[0, 0, 0] > 0.5 and out[0, 2, 2] < 0.5


def test_infer_runs_requested_tasks_only():
    logits = masks_from((0, 6, 0, 6))
    pred = infer(logits, one_hot_probs([2]), IS_THING, tasks=("semantic",))
    assert pred.semantic is not None and pred.panoptic is None and pred.instance is None


def test_oracle_proposals_reproduce_ground_truth_and_peak_inside():
    from vitp.proposal_geometry import select_points
    from vitp.proposers import OracleProposer
    from vitp.structures import Target

    segments = torch.full((9, 12), -1)
    segments[:, :6] = 0
    segments[2:7, 7:12] = 1
    target = Target(masks=torch.zeros(2, 9, 12, dtype=torch.bool), labels=torch.tensor([2, 0]),
                    is_crowd=torch.tensor([False, False]), segments=segments, image_id=1,
                    file_name="a.jpg", orig_size=(9, 12), valid_size=(9, 12))
    props = OracleProposer(num_classes=3)(torch.zeros(1, 3, 9, 12), "panoptic", [target])
    pred = infer(props.mask_logits[0], props.class_logits[0].softmax(-1), IS_THING)
    assert torch.equal(pred.panoptic.segments >= 0, segments >= 0)
    assert pred.panoptic.labels[pred.panoptic.segments[4, 2]] == 2
    point = select_points(props.mask_logits, props.valid_sizes, (9, 12))[0, 1, 0]
    row, col = ((point + 1) * torch.tensor([9, 12]) / 2).floor().long().tolist()
    assert (row, col) == (4, 9)  # centre of the 5x5 segment, not its top-left corner


def test_original_size_logits_maps_a_fractional_valid_region_through_the_frame():
    import torch.nn.functional as F

    from vitp.proposal_geometry import original_size_logits
    from vitp.structures import Batch, Proposals, Target

    logits = torch.randn(1, 2, 16, 16)  # a quarter of a 64x64 frame; the image fills 64x46 of it
    target = Target(masks=torch.zeros(0, 64, 64, dtype=torch.bool), labels=torch.zeros(0, dtype=torch.long),
                    is_crowd=torch.zeros(0, dtype=torch.bool), segments=torch.full((92, 128), -1),
                    image_id=1, file_name="a.jpg", orig_size=(92, 128), valid_size=(46, 64))
    batch = Batch(images=torch.zeros(1, 3, 64, 64), targets=[target])
    out = original_size_logits(Proposals(mask_logits=logits), batch, 0)
    frame = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)[:, :, :46, :64]
    expected = F.interpolate(frame, size=(92, 128), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(out, expected)


def test_objectness_rule_keeps_confident_objects_with_flat_classes():
    """A segment the proposer is sure is an object but whose class is uncertain (a flattened fused
    distribution) is dropped by the reference rule and kept, with its top class, by ``objectness``."""
    logits = masks_from((0, 3, 0, 6), (3, 6, 0, 6))
    obj = torch.tensor([0.95, 0.3])
    classes = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    probs = torch.cat([classes * obj[:, None], 1 - obj[:, None]], 1)
    ref = panoptic_inference(logits, probs, IS_THING, PostProcessConfig(keep_rule="reference"))
    assert len(ref.labels) == 0
    new = panoptic_inference(logits, probs, IS_THING, PostProcessConfig(keep_rule="objectness"))
    assert new.labels.tolist() == [0]
    assert (new.segments[:3] == 0).all() and (new.segments[3:] == -1).all()
    torch.testing.assert_close(new.scores, torch.tensor([0.95 * 0.5]))
    with pytest.raises(ValueError):
        PostProcessConfig(keep_rule="max")
