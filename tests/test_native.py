"""The native (SeNaTra-style) grouping backbone and ``NativeProposer``: shapes, assignment
properties (row-stochastic, local), the chain, masks = chain columns, loss and gradients, ablation
switches, save/load, and one-batch ``vitp fit`` / ``vitp test`` through the real config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT
from vitp.backbones import NativeBackbone, compose
from vitp.proposers import NativeProposer
from vitp.proposers.native import NativeArchitecture, NativeLossSettings
from vitp.structures import Target

K = 5


def tiny(**kwargs) -> NativeProposer:
    torch.manual_seed(0)
    return NativeProposer(num_classes=K, preset="tiny", is_thing=[True, True, False, False, False], **kwargs)


def make_target(h: int, w: int) -> Target:
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, : h // 2] = True
    masks[1, h // 2 :, : w // 3] = True
    masks[2, h // 2 :, w // 3 :] = True
    return Target(masks=masks, labels=torch.tensor([0, 3, 1]), is_crowd=torch.tensor([False, False, True]),
                  segments=torch.zeros(h, w, dtype=torch.long), image_id=0, file_name="x.png",
                  orig_size=(h, w), valid_size=(h, w))


@pytest.mark.parametrize("size", [(64, 64), (100, 130), (37, 45)])
def test_shapes_any_size(size):
    h, w = size
    proposer = tiny().eval()
    with torch.no_grad():
        out = proposer(torch.randn(2, 3, h, w))
    q = math.ceil(h / 32) * math.ceil(w / 32)
    assert out.mask_logits.shape == (2, q, math.ceil(h / 4), math.ceil(w / 4))
    assert out.class_logits.shape == (2, q, K + 1)
    assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.class_logits).all()
    feats = proposer.backbone(torch.randn(1, 3, h, w)).features
    hp, wp = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    for s, (f, d) in enumerate(zip(feats, proposer.backbone.dims)):
        assert f.shape == (1, d, hp // 4 // 2**s, wp // 4 // 2**s)


def test_assignments_row_stochastic_and_local():
    torch.manual_seed(0)
    backbone = NativeBackbone.from_preset("tiny")
    out = backbone(torch.randn(2, 3, 96, 128))
    for layer, a in enumerate(out.assignments):
        dense = a.dense()
        (h, w), (h2, w2) = a.in_size, a.out_size
        assert dense.shape == (2, h * w, h2 * w2)
        assert torch.allclose(dense.sum(-1), torch.ones(2, h * w), atol=1e-5)
        assert (dense >= 0).all()
        assert a.local == (layer < 2)
        if a.local:
            yi, xi = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            yo, xo = torch.meshgrid(torch.arange(h2), torch.arange(w2), indexing="ij")
            near = ((yi.reshape(-1, 1) // 2 - yo.reshape(1, -1)).abs() <= 1) & (
                (xi.reshape(-1, 1) // 2 - xo.reshape(1, -1)).abs() <= 1)
            assert dense[:, ~near].abs().max() == 0, "a local layer assigned a token outside the 3x3 cells"
            assert dense[:, near].min() > 0  # every allowed cell gets some mass (softmax)
            assert a.weights.shape == (2, h, w, 9)  # stored compactly, linear in N_in


def test_chain_rows_sum_to_one_and_equal_the_matrix_product():
    torch.manual_seed(0)
    out = NativeBackbone.from_preset("tiny")(torch.randn(1, 3, 64, 96))
    product = out.assignments[0].dense()
    for level in (1, 2, 3):
        if level > 1:
            product = product @ out.assignments[level - 1].dense()
        chain = out.chain(level)
        assert torch.allclose(chain, product, atol=1e-5)
        assert torch.allclose(chain.sum(-1), torch.ones_like(chain[..., 0]), atol=1e-5)
    assert torch.allclose(compose(out.assignments), out.chain(3))


def test_masks_are_the_chain_columns():
    proposer = tiny().eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        props = proposer(images)
        chain = proposer.backbone(images).chain()  # [B, N_4, Q]
    soft = props.mask_logits.sigmoid().flatten(2).transpose(1, 2)
    assert torch.allclose(soft, chain.clamp(1e-6, 1 - 1e-6), atol=1e-5)
    assert torch.allclose(props.mask_logits.sigmoid().sum(1), torch.ones(2, 16, 24), atol=1e-4)


@pytest.mark.parametrize("arch", [{}, {"query_init": "learned", "pos_bias": False}, {"grouping": False}])
def test_loss_finite_and_reaches_every_parameter(arch):
    proposer = tiny(architecture=NativeArchitecture(**arch), loss=NativeLossSettings(train_num_points=256))
    images = torch.randn(2, 3, 64, 64)
    losses = proposer.loss(proposer(images), [make_target(64, 64), make_target(64, 64)])
    assert set(losses) >= {"loss", "loss_cross_entropy", "loss_mask", "loss_dice", "loss_semantic"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["num_masks"] == 4  # crowd segments excluded
    losses["loss"].backward()
    missing = [n for n, p in proposer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


def test_ablation_switches_change_the_output():
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = tiny().eval()(images).mask_logits
        for arch in ({"grouping": False}, {"query_init": "learned"}, {"pos_bias": False}):
            other = tiny(architecture=NativeArchitecture(**arch)).eval()(images).mask_logits
            assert other.shape == base.shape and not torch.allclose(other, base, atol=1e-3), arch
        off = tiny(architecture=NativeArchitecture(grouping=False)).eval()(images).mask_logits.sigmoid()
    # grouping off: every pixel belongs to the stride-32 cell that contains it, nothing else
    cell = torch.arange(2).repeat_interleave(8)  # 16x16 mask pixels, 2x2 groups
    expected = (cell[:, None] * 2 + cell[None, :]).flatten()
    assert torch.equal(off[0].flatten(1).argmax(0), expected) and off.max() > 0.999


def test_semantic_from_head_is_task_conditioned():
    proposer = tiny(semantic_from_head=True).eval()
    assert proposer.task_conditioned and not tiny().task_conditioned
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        sem, pan = proposer(images, "semantic"), proposer(images, "panoptic")
        expected = proposer.semantic_head(sem.query_embeddings)
    assert torch.allclose(sem.class_logits[..., :-1], expected)
    assert torch.allclose(sem.mask_logits, pan.mask_logits)
    assert sem.class_logits.softmax(-1)[..., -1].max() < 1e-6


def test_save_pretrained_round_trip(tmp_path: Path):
    proposer = tiny(architecture=NativeArchitecture(query_init="learned")).eval()
    proposer.save_pretrained(tmp_path / "native")
    loaded = NativeProposer(model=str(tmp_path / "native"), num_classes=K).eval()
    assert loaded.arch == proposer.arch and loaded.is_thing == proposer.is_thing
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = proposer(images), loaded(images)
    assert torch.equal(a.mask_logits, b.mask_logits) and torch.equal(a.class_logits, b.class_logits)
    with pytest.raises(ValueError, match="classes"):
        NativeProposer(model=str(tmp_path / "native"), num_classes=K + 1)


def test_architecture_fields_equal_the_preset_they_spell_out():
    """``architecture`` with the preset's values spelt out builds the preset's model (same keys, shapes
    and, with the same seed, weights); its fields override the preset's; a stage list needs 4 values."""
    from vitp.backbones.native import NATIVE_PRESETS

    preset = tiny().state_dict()
    torch.manual_seed(0)
    spelt = NativeProposer(num_classes=K, preset=None, is_thing=[True, True, False, False, False],
                           architecture=NativeArchitecture(**NATIVE_PRESETS["tiny"])).state_dict()
    assert list(preset) == list(spelt) and all(torch.equal(preset[k], spelt[k]) for k in preset)
    wider = tiny(architecture=NativeArchitecture(dims=[16, 32, 64, 96]))
    assert wider.arch == {**NATIVE_PRESETS["tiny"], "dims": [16, 32, 64, 96], "tau": None, "grouping_iters": 3,
                          "grouping": True, "query_init": "conv", "pos_bias": True}
    assert wider.class_head.fc1.in_features == 96
    with pytest.raises(ValueError, match="depths needs 4 values"):
        NativeArchitecture(depths=[1, 1])


def test_config_fit_and_test_one_batch(tiny_coco_root: Path, tmp_path: Path, monkeypatch):
    from vitp.cli import main

    monkeypatch.chdir(tmp_path)
    config = PROJECT_ROOT / "configs" / "synthetic" / "proposer" / "native_small.yaml"
    common = ["--config", str(config), "--data.init_args.root", str(tiny_coco_root),
              "--data.init_args.image_size", "64", "--data.init_args.num_workers", "0",
              "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2",
              "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false"]
    main(["fit", *common, "--model.init_args.proposer.init_args.preset", "tiny",
          "--model.init_args.proposer.init_args.loss.train_num_points", "256"])
    saved = tmp_path / "outputs" / "synthetic" / "proposer_native" / "model"
    assert (saved / "native_proposer.json").is_file(), "SaveProposer did not write the trained proposer"
    main(["test", *common, "--model.init_args.proposer.init_args.model", str(saved), "--trainer.callbacks", "[]"])
    # ViT-P over the frozen native proposer (configs/synthetic/vitp/tiny_native.yaml), one batch
    vitp_config = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_native.yaml"
    main(["fit", "--config", str(vitp_config), *common[2:], "--model.init_args.proposer.init_args.model", str(saved),
          "--model.init_args.classifier.init_args.image_size", "64", "--trainer.callbacks", "[]"])


class _LargestTensor:
    """Records the largest tensor (elements) any op creates while active (a TorchDispatchMode)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        record = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        record.max_numel = max(record.max_numel, t.numel())
                return out

        self.max_numel, self.mode = 0, Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def test_local_grouping_memory_linear_at_512x683():
    """The local grouping layers never build an ``N_in x N_out`` matrix: the largest tensor any op
    creates grows like the number of input tokens (x4 from 256x342 to 512x683, not x16), is at
    most ``9 x C_out`` per input token, far below ``N_in x N_out``, and the assignment is stored as ``[B, h, w, 9]``; the whole tiny
    backbone runs on a 512x683 image."""
    from vitp.backbones.native_grouping import SpatialGrouping

    torch.manual_seed(0)
    layers = [SpatialGrouping(16, 32, local=True), SpatialGrouping(32, 64, local=True)]
    largest = {}
    for size in ((256, 342), (512, 683)):
        h, w = math.ceil(size[0] / 32) * 8, math.ceil(size[1] / 32) * 8  # stride-4 grid of the padded image
        biggest, n_in = 0, h * w
        with torch.no_grad():
            x = torch.randn(1, h * w, 16)
            for layer in layers:
                with _LargestTensor() as rec:
                    x, a = layer(x, h, w)
                n_out = (h // 2) * (w // 2)
                assert a.weights.shape == (1, h, w, 9) and a.local
                # per input token at most 9 candidates x the output width; far below N_in x N_out
                assert rec.max_numel <= 9 * layer.q.out_features * h * w, (size, rec.max_numel)
                if size == (512, 683) and layer is layers[0]:  # 22528 x 5632 tokens: 127 M if dense
                    assert rec.max_numel < h * w * n_out / 20, "a local layer built a near-dense matrix"
                biggest = max(biggest, rec.max_numel)
                h, w = h // 2, w // 2
        largest[size] = (biggest, n_in)
    (small, n_small), (big, n_big) = largest[(256, 342)], largest[(512, 683)]
    assert n_big / n_small == pytest.approx(4.0, rel=0.05)
    assert big / small == pytest.approx(n_big / n_small, rel=0.05), largest  # linear, not quadratic

    backbone = NativeBackbone.from_preset("tiny").eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 512, 683))
    assert [a.weights.shape for a in out.assignments[:2]] == [(1, 128, 176, 9), (1, 64, 88, 9)]
    assert out.tokens.shape == (1, 16 * 22, 128)
    chain = out.chain(2)  # stride-4 tokens -> stride-16 groups through the two local layers
    assert chain.shape == (1, 128 * 176, 32 * 44)
    assert torch.allclose(chain.sum(-1), torch.ones(1, 128 * 176), atol=1e-4)


def test_dense_locality_and_learned_tau_are_opt_in():
    """Off by default (no extra parameter); the dense layer's locality prior makes the untrained
    final groups the uniform grid (every group used; the default collapses to a few); the learned
    log-scale starts at tau, is clamped, and both receive gradients."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 128, 128)
    names = {n for n, _ in NativeBackbone.from_preset("tiny").named_parameters()}
    assert not any("locality" in n or "log_tau" in n for n in names)
    torch.manual_seed(0)
    base = NativeBackbone.from_preset("tiny")
    torch.manual_seed(0)
    local = NativeBackbone.from_preset("tiny", dense_locality=8.0, learn_tau=True)
    assert [g.locality is not None for g in local.groupings] == [False, False, True]
    assert all(math.isclose(g.scale().item(), g.tau, rel_tol=1e-6) for g in local.groupings)
    with torch.no_grad():
        used_base = [len(torch.unique(m.argmax(-1))) for m in base(images).chain(3)]
        out = local(images)
    used = [len(torch.unique(m.argmax(-1))) for m in out.chain(3)]
    assert used == [16, 16] and max(used_base) < 16, (used, used_base)
    # the argmax of the untrained final groups is mostly the stride-32 cell of each stride-4 token
    # (the local layers below are soft, so tokens near a cell border may go to the neighbour)
    cell = torch.arange(4).repeat_interleave(8)
    grid = (cell[:, None] * 4 + cell[None, :]).flatten()
    agree = [(m.argmax(-1) == grid).float().mean().item() for m in out.chain(3)]
    assert min(agree) > 0.8, agree
    local.groupings[2].log_tau.data.fill_(10.0)
    assert local.groupings[2].scale().item() == pytest.approx(100.0)
    local.groupings[2].log_tau.data.fill_(math.log(local.groupings[2].tau))
    local(images).tokens.sum().backward()
    assert all(g.log_tau.grad is not None and g.log_tau.grad.abs() > 0 for g in local.groupings)
    assert local.groupings[2].locality.grad.abs() > 0
