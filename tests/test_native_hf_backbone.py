"""The native grouping backbone under HF Mask2Former's pixel decoder (``vitp.backbones.hf_native``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoBackbone, Mask2FormerForUniversalSegmentation

from vitp.backbones.hf_native import NativeBackboneConfig, NativeHFBackbone, mask2former_native
from vitp.proposers.mask2former import Mask2FormerProposer

TINY_HEAD = dict(feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1,
                 decoder_layers=2, num_attention_heads=2, dim_feedforward=64, num_queries=10, train_num_points=256)
Q, K = 10, 3


@pytest.fixture(scope="module")
def model() -> Mask2FormerForUniversalSegmentation:
    torch.manual_seed(0)
    return mask2former_native("tiny", labels=["a", "b", "c"], **TINY_HEAD)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def test_auto_backbone_gives_four_strides():
    bb = AutoBackbone.from_config(NativeBackboneConfig.from_preset("tiny"))
    assert isinstance(bb, NativeHFBackbone)
    assert bb.channels == [16, 32, 64, 128] and bb.out_features == ["stage1", "stage2", "stage3", "stage4"]
    maps = bb(torch.randn(1, 3, 70, 90)).feature_maps  # not a multiple of 32: cropped to ceil(size / stride)
    assert [tuple(m.shape[-2:]) for m in maps] == [(18, 23), (9, 12), (5, 6), (3, 3)]


def test_forward_shapes(model, images):
    assert isinstance(model.model.pixel_level_module.encoder, NativeHFBackbone)
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=images)
    assert out.masks_queries_logits.shape == (2, Q, 16, 24)
    assert out.class_queries_logits.shape == (2, Q, K + 1)


def test_loss_reaches_grouping_layers(model, images):
    model.train()
    model.zero_grad()
    masks = torch.zeros(2, 64, 96)
    masks[0, :32], masks[1, :, 40:] = 1, 1
    out = model(pixel_values=images, mask_labels=[masks, masks], class_labels=[torch.tensor([0, 2])] * 2)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grouping = {n: p.grad for n, p in model.named_parameters() if ".native.groupings." in n}
    assert grouping and all(g is not None for g in grouping.values())
    for s in range(3):  # each of the three grouping layers gets a gradient
        assert any(g.abs().sum() > 0 for n, g in grouping.items() if f".groupings.{s}." in n)


def test_save_and_load_in_a_fresh_process(model, images, tmp_path):
    model.eval()
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        ref = model(pixel_values=images).masks_queries_logits
    same = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(same(pixel_values=images).masks_queries_logits, ref)
    torch.save({"images": images, "ref": ref}, tmp_path / "ref.pt")
    # a new interpreter knows "vitp_native" once vitp's Mask2Former proposer module is imported
    code = (
        "import sys, torch\n"
        "import vitp.proposers.mask2former\n"
        "from transformers import Mask2FormerForUniversalSegmentation\n"
        "d = sys.argv[1]; r = torch.load(d + '/ref.pt')\n"
        "m = Mask2FormerForUniversalSegmentation.from_pretrained(d).eval()\n"
        "with torch.no_grad(): out = m(pixel_values=r['images']).masks_queries_logits\n"
        "assert torch.equal(out, r['ref']), (out - r['ref']).abs().max()\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_proposer_preset(tmp_path):
    torch.manual_seed(0)
    p = Mask2FormerProposer(preset="native-tiny", num_classes=K)
    assert isinstance(p.backbone_module(), NativeHFBackbone)
    p.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = p(x)
    assert out.mask_logits.shape == (2, 20, 16, 24) and out.class_logits.shape == (2, 20, K + 1)
    p.save_pretrained(tmp_path)
    q = Mask2FormerProposer(model=str(tmp_path), num_classes=K).eval()
    with torch.no_grad():
        assert torch.equal(q(x).mask_logits, out.mask_logits)
