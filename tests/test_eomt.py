"""EomtProposer (HF EoMT) on tiny random models, its one-batch fit / test through the CLI, and the
shared trunk: a square-frame PointViT reading the proposer's trunk states gives the logits of its
own trunk pass with equal weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT
from test_cli import vitp_in_process
from vitp.classifiers import PointViT
from vitp.proposers import EomtProposer
from vitp.structures import Target

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2, img_size=56, init_values=0.5)
SMALL = ["--data.init_args.image_size", "128", "--data.init_args.num_workers", "0",
         "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2"]


def target(size: tuple[int, int]) -> Target:
    masks = torch.zeros(2, *size, dtype=torch.bool)
    masks[0, 5:30, 4:20] = True
    masks[1, 30:, :] = True
    return Target(masks=masks, labels=torch.tensor([1, 3]), is_crowd=torch.zeros(2, dtype=torch.bool),
                  segments=torch.full(size, -1), image_id=0, file_name="x.png", orig_size=size, valid_size=size)


@pytest.fixture
def trunk_file(tmp_path: Path) -> tuple[PointViT, Path]:
    """A tiny square-frame classifier and its trunk written as a timm safetensors file."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clf = PointViT(5, "vit_small_patch14_dinov2", image_size=56, model_kwargs=TINY_VIT, point_encoding="sample_patch",
                   point_start_block=1, frame="square").eval()
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "trunk.safetensors"
    save_file({k: v.contiguous() for k, v in clf.backbone.state_dict().items()}, str(path))
    return clf, path


@pytest.mark.parametrize("attention", ["one_way", "full"])
def test_shapes_and_frame(attention: str) -> None:
    torch.manual_seed(0)
    p = EomtProposer(preset="tiny", num_classes=5, query_attention=attention).eval()
    out = p(torch.randn(2, 3, 70, 42))
    # the square frame (56 px, 4x4 patches, masks 16x16) cropped back to the 70x42 frame
    assert out.mask_logits.shape == (2, 8, 16, 10) and out.class_logits.shape == (2, 8, 6)
    assert out.trunk is None


def test_frozen_trunk_one_batch_fit() -> None:
    torch.manual_seed(0)
    p = EomtProposer(preset="tiny", num_classes=5, freeze="backbone", config_overrides={"num_blocks": 2}).train()
    images = torch.randn(2, 3, 56, 48)
    targets = [target((56, 48)), target((56, 48))]
    opt = torch.optim.AdamW([q for q in p.parameters() if q.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        out = p(images)
        assert len(out.layers) == 1  # the first query block's prediction, deep supervision
        loss = p.loss(out, targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert all(q.grad is None for q in p.backbone_module().parameters())
    assert p.hf.query.weight.grad is not None


def test_trunk_checkpoint_and_shared_trunk_logits(trunk_file: tuple[PointViT, Path]) -> None:
    clf, path = trunk_file
    prop = EomtProposer(preset="tiny", num_classes=5, trunk_checkpoint=str(path), share_trunk_from=1).eval()
    torch.testing.assert_close(prop.hf.layers[1].mlp.fc2.weight, clf.backbone.blocks[1].mlp.fc2.weight)
    images = torch.randn(2, 3, 60, 44)
    valid = torch.tensor([[60, 44], [40, 30]])
    points = torch.rand(2, 7, 2) * 2 - 1
    with torch.no_grad():
        shared = prop(images).trunk
        assert shared is not None and shared.first_block == 1
        from_proposer = clf.classify_points(clf.cache_from_trunk(shared, valid, images.shape[-2:]), points)
        own = clf(images, points, valid)  # the separate trunk: the classifier's own pass
    torch.testing.assert_close(from_proposer, own, atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="share_trunk_from"):
        EomtProposer(preset="tiny", num_classes=5, query_attention="full", share_trunk_from=0)


def test_trunk_checkpoint_must_fit(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    wide = PointViT(5, "vit_small_patch14_dinov2", image_size=56, model_kwargs={**TINY_VIT, "embed_dim": 64})
    save_file({k: v.contiguous() for k, v in wide.backbone.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(RuntimeError, match="w.safetensors"):
        EomtProposer(preset="tiny", num_classes=5, trunk_checkpoint=str(tmp_path / "w.safetensors"))


def test_eomt_config_fast_dev_run_fit_and_test(tiny_coco_root: Path, tmp_path: Path, monkeypatch,
                                               trunk_file: tuple[PointViT, Path]) -> None:
    """The stage-1 and stage-2 configs of the pretrained recipe, with the tiny preset and a tiny trunk
    file in place of DINOv2-S."""
    monkeypatch.chdir(tmp_path)
    config = PROJECT_ROOT / "configs" / "synthetic" / "proposer" / "eomt_dinov2_small.yaml"
    trunk = ["--model.init_args.proposer.init_args.trunk_checkpoint", str(trunk_file[1])]
    tiny = ["--model.init_args.proposer.init_args.preset", "tiny", *trunk,
            "--model.init_args.proposer.init_args.image_size", "56"]
    vitp_in_process("fit", "--config", str(config), "--data.init_args.root", str(tiny_coco_root), *SMALL, *tiny,
                    "--trainer.fast_dev_run", "1")
    saved = tmp_path / "outputs" / "synthetic" / "proposer_eomt" / "hf_model"
    assert (saved / "config.json").is_file()
    vitp_in_process("test", "--config", str(config), "--data.init_args.root", str(tiny_coco_root), *SMALL,
                    "--model.init_args.proposer.init_args.model", str(saved), *tiny,
                    "--trainer.fast_dev_run", "1", "--trainer.callbacks", "[]")
    # stage 2 of the pretrained recipe on that proposer: the classifier reads its trunk (share_trunk_from)
    stage2 = PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "dinov2_small_eomt.yaml"
    clf = "--model.init_args.classifier.init_args."
    for cmd in ("fit", "test"):
        vitp_in_process(cmd, "--config", str(stage2), "--data.init_args.root", str(tiny_coco_root), *SMALL,
                        "--model.init_args.proposer.init_args.model", str(saved),
                        "--model.init_args.proposer.init_args.share_trunk_from", "1",
                        f"{clf}checkpoint_path", str(trunk_file[1]), f"{clf}image_size", "56",
                        f"{clf}point_start_block", "1", f"{clf}model_kwargs", str(TINY_VIT),
                        "--trainer.fast_dev_run", "1", "--trainer.callbacks", "[]")


def test_trunk_cache_skips_seen_views_with_the_same_outputs(monkeypatch) -> None:
    torch.manual_seed(0)
    kw = dict(preset="tiny", num_classes=5, freeze="backbone")
    cached = EomtProposer(**kw, trunk_cache_size=3).train()
    plain = EomtProposer(**kw).train()
    plain.load_state_dict(cached.state_dict())
    calls = []
    original = cached._trunk_pass
    monkeypatch.setattr(cached, "_trunk_pass", lambda x, first: calls.append(len(x)) or original(x, first))
    a, b = torch.randn(2, 3, 56, 48), torch.randn(2, 3, 56, 48)
    with torch.no_grad():
        for batch in (a, torch.cat([a[:1], b[:1]]), a):
            torch.testing.assert_close(cached(batch).mask_logits, plain(batch).mask_logits, atol=1e-5, rtol=1e-4)
    assert calls == [2, 1]  # the second batch runs only its new view, the third none
    assert len(cached._trunk_memo) == 3
    cached.eval()
    with torch.no_grad():
        cached(a)
    assert calls == [2, 1, 2]  # evaluation never reads the cache
