"""Empty proposals are not classified (``InferenceSettings.skip_empty_proposals``): which proposals
count as present, the padded pick of each image's present proposals, and the pipeline's results."""

from __future__ import annotations

import torch

from vitp.classifiers import GlimpseSettings, PointViT
from vitp.pipeline import TwoStagePipeline
from vitp.proposal_geometry import PRESENT_LOGIT, ProposalPick, present_proposals
from vitp.proposers.base import MaskProposer
from vitp.settings import InferenceSettings
from vitp.structures import Batch, DatasetInfo, Proposals, Target
from vitp.upsampling import crop_and_resize, crop_logits

INFO = DatasetInfo(("a", "b", "c"), (1, 5, 9), (True, True, False))


def make_batch(valid_sizes: list[tuple[int, int]], orig_sizes: list[tuple[int, int]], frame=(16, 20)) -> Batch:
    targets = [Target(masks=torch.zeros(0, *frame, dtype=torch.bool), labels=torch.zeros(0, dtype=torch.long),
                      is_crowd=torch.zeros(0, dtype=torch.bool), segments=torch.full(orig, -1), image_id=i,
                      file_name=f"{i}.jpg", orig_size=orig, valid_size=valid)
               for i, (valid, orig) in enumerate(zip(valid_sizes, orig_sizes))]
    return Batch(images=torch.randn(len(targets), 3, *frame), targets=targets)


def random_logits(b: int, q: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Blobs of positive logits; every third proposal empty, a few positive only near the padding
    or just below / above the presence threshold."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, q, h, w, generator=g) * 3 - 2
    logits[:, ::3] = -torch.rand(b, (q + 2) // 3, h, w, generator=g) - 0.01
    return logits


class FixedProposer(MaskProposer):
    def __init__(self, proposals: Proposals) -> None:
        super().__init__()
        self.proposals = proposals

    def forward(self, images, task, targets=None):
        return self.proposals


def test_present_proposals_keep_every_mask_the_post_processing_can_draw():
    """A proposal judged empty has no pixel at sigmoid >= 0.5 at any output size (fractional crops
    of the frame included); one positive only in the padding is empty."""
    batch = make_batch([(16, 13), (11, 20)], [(16, 13), (11, 20)])
    for seed in range(6):
        logits = random_logits(2, 12, 8, 10, seed)
        logits[0, 3, :, 8:] = 5.0  # only where image 0 is padding (its valid width 13 of 20 = 6.5 cells, read: 8)
        logits[1, 6, 0, 0] = PRESENT_LOGIT / 2  # just inside the threshold: present
        proposals = Proposals(mask_logits=logits)
        present = present_proposals(proposals, batch)
        assert present[1, 6] and not present[0, 6] and not present[:, [0, 3, 9]].any()
        for i, target in enumerate(batch.targets):
            for size in [target.orig_size, (5, 7), (23, 29), (64, 80)]:
                big = crop_and_resize(logits[i], target.valid_size, size, tuple(batch.images.shape[-2:]))
                drawn = (big.sigmoid() >= 0.5).flatten(1).any(1)
                assert not (drawn & ~present[i]).any(), (seed, i, size)


def test_present_proposals_read_a_proposer_s_own_valid_region():
    """Proposals that state their valid region in mask cells (``Proposals.valid_sizes``)."""
    batch = make_batch([(16, 20)], [(16, 20)])
    logits = torch.full((1, 3, 8, 10), -2.0)
    logits[0, 0, 6:, :] = 1.0  # below the stated region (6 rows): empty
    logits[0, 1, 5, 7] = 1.0  # its last row and column: present
    logits[0, 2, :, 8:] = 1.0  # right of it (8 columns): empty
    proposals = Proposals(mask_logits=logits, valid_sizes=torch.tensor([[6, 8]]))
    assert present_proposals(proposals, batch).tolist() == [[False, True, False]]


def test_proposal_pick_puts_present_proposals_first_and_scatters_back():
    present = torch.tensor([[False, True, False, True, True],
                            [False, False, False, False, False],
                            [True, False, False, False, False]])
    pick = ProposalPick.of(present)
    assert pick.index.shape == (3, 3)
    assert pick.index[0].tolist() == [1, 3, 4]
    assert pick.index[1].tolist() == [0, 0, 0]  # none present: padding only
    assert pick.index[2].tolist() == [0, 0, 0]  # its one proposal, repeated as padding
    logits = (pick.index.float() * 10 + torch.arange(3.0)[:, None])[..., None].expand(3, 3, 2)
    scattered = pick.scatter(logits)
    assert scattered.classified is present
    assert scattered.logits[0, :, 0].tolist() == [0, 10, 0, 30, 40]
    assert scattered.logits[2, :, 0].tolist() == [2, 0, 0, 0, 0]
    assert not scattered.logits[1].any()


def test_pick_with_no_present_proposal_has_no_columns_and_an_empty_set_resizes():
    pick = ProposalPick.of(torch.zeros(2, 4, dtype=torch.bool))
    assert pick.index.shape == (2, 0)
    assert pick.scatter(torch.zeros(2, 0, 3)).logits.shape == (2, 4, 3)
    # no proposal left: cropped through the frame (valid width 8.5 of 10 cells) and seen at any size
    logits = crop_logits(torch.zeros(0, 8, 10), (16, 17), (30, 31), (16, 20))
    assert logits.low.shape == (0, 16, 17) and logits.full().shape == (0, 30, 31)


def tiny_mask_classifier() -> PointViT:
    torch.manual_seed(0)
    return PointViT(4, model_name="vit_tiny_patch16_224", image_size=32, point_encoding="sample_pos_embed",
                    glimpse=GlimpseSettings(window=8, masks=True, fit_box=True),
                    model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}).eval()


def test_pipeline_classifies_present_proposals_only_and_voids_the_rest():
    batch = make_batch([(16, 20), (16, 14)], [(16, 20), (32, 28)])
    logits = random_logits(2, 9, 8, 10, seed=1)
    logits[1, 1] = -3.0  # image 1 has fewer present proposals than image 0: padded pick
    class_logits = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(2))
    proposals = Proposals(mask_logits=logits, class_logits=class_logits)
    clf = tiny_mask_classifier()
    seen = []
    clf.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[1].shape[1]), with_kwargs=True)
    pipes = {skip: TwoStagePipeline(FixedProposer(proposals), clf, 3, INFO.thing_mask(),
                                    ("panoptic", "semantic", "instance"), ("vitp",),
                                    InferenceSettings(keep_rule="objectness", skip_empty_proposals=skip),
                                    point_no_object=True)
             for skip in (False, True)}
    present = present_proposals(proposals, batch)
    with torch.no_grad():
        out = {skip: pipe.classify(batch, [proposals])[0][0] for skip, pipe in pipes.items()}
        probs = {skip: pipes[skip].variant_probs(proposals, out[skip], ("vitp",))["vitp"] for skip in pipes}
        preds = pipes[True](batch).predictions["vitp"]
    assert seen == [9] + [int(present.sum(1).max())] * 2  # classify alone, then the whole pipeline
    assert torch.equal(out[True].classified, present) and out[False].classified is None
    # one-way attention: a present proposal's classes do not depend on which others are classified
    torch.testing.assert_close(probs[True][present], probs[False][present], rtol=1e-5, atol=1e-6)
    void = torch.zeros(4)
    void[-1] = 1
    assert torch.equal(probs[True][~present], void.expand(int((~present).sum()), 4))
    assert len(preds) == 2 and preds[1].panoptic.segments.shape == (32, 28)


def test_every_proposal_is_classified_when_skipping_is_off():
    batch = make_batch([(16, 17)], [(16, 17)])  # valid width 8.5 of 10 cells: resized through the frame
    proposals = Proposals(mask_logits=torch.full((1, 5, 8, 10), -4.0), class_logits=torch.zeros(1, 5, 4))
    clf = tiny_mask_classifier()
    outputs = []
    for skip, expected in ((True, 0), (False, 5)):
        seen = []
        hook = clf.register_forward_pre_hook(lambda mod, args: seen.append(args[1].shape[1]))
        pipe = TwoStagePipeline(FixedProposer(proposals), clf, 3, INFO.thing_mask(), ("panoptic", "semantic", "instance"),
                                ("vitp",), InferenceSettings(skip_empty_proposals=skip), point_no_object=True)
        with torch.no_grad():
            logits = pipe.classify(batch, [proposals])[0][0]
            pred = pipe(batch).predictions["vitp"][0]
        hook.remove()
        assert seen == ([] if expected == 0 else [expected, expected])
        assert logits.logits.shape == (1, 5, 4) and len(pred.panoptic.labels) == 0
        # classified, the empty masks still make zero-score instances (as in the reference)
        assert (len(pred.instance.labels) == 0) == skip and pred.semantic.shape == (16, 17)
        outputs.append(pred.semantic)
    assert torch.equal(outputs[0], outputs[1])  # no class mass anywhere either way


def test_whole_path_on_present_proposals_equals_voiding_the_empty_ones():
    """``__call__`` post-processes ViT-P on the present proposals alone (padded per image with empty
    ones); the same as post-processing all of them with the empty ones labelled no object."""
    batch = make_batch([(16, 20), (16, 14)], [(16, 20), (24, 21)])
    logits = random_logits(2, 9, 8, 10, seed=4)
    logits[1, 2] = -3.0
    proposals = Proposals(mask_logits=logits, class_logits=torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(5)))
    pipe = TwoStagePipeline(FixedProposer(proposals), tiny_mask_classifier(), 3, INFO.thing_mask(),
                            ("panoptic", "semantic", "instance"), ("vitp", "proposer"),
                            InferenceSettings(keep_rule="objectness", keep_threshold=0.2), point_no_object=True)
    with torch.no_grad():
        whole = pipe(batch).predictions
        point_logits, _ = pipe.classify(batch, [proposals])
        voided = pipe.postprocess(batch, [proposals], point_logits, ("vitp", "proposer"))
    assert list(whole) == ["vitp", "proposer"]
    for variant in whole:
        for a, b in zip(whole[variant], voided[variant]):
            assert torch.equal(a.semantic, b.semantic)
            assert torch.equal(a.panoptic.segments, b.panoptic.segments)
            assert torch.equal(a.panoptic.labels, b.panoptic.labels)
            assert torch.equal(a.instance.masks, b.instance.masks) and torch.equal(a.instance.scores, b.instance.scores)
    assert any(len(p.panoptic.labels) for p in whole["vitp"])
