"""``scripts/native_maskfree.py`` (issue 10, item 5: grouping trained with image-level labels only,
partition quality against a uniform grid) and ``scripts/native_hierarchy.py`` (item 3: hierarchy
picture) run end to end on a tiny setting: files written, metrics in range, the backbone the first
writes loads in the second."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PROJECT_ROOT


def load_script(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("size,n", [((64, 64), 16), ((96, 128), 12), ((40, 200), 5), ((8, 8), 1000)])
def test_matched_grid_has_about_n_cells(size, n):
    grid = load_script("native_maskfree").matched_grid(*size, n)
    assert grid.shape == size
    cells = np.unique(grid).size
    assert cells <= size[0] * size[1]
    if n <= 16:
        assert abs(cells - n) <= max(2, n // 3), (cells, n)


def test_maskfree_then_hierarchy_tiny(tiny_coco_root: Path, tmp_path: Path, capsys, keep_threads):
    maskfree = load_script("native_maskfree")
    work = tmp_path / "maskfree"
    maskfree.main(["--seeds", "0", "--epochs", "1", "--root", str(tiny_coco_root), "--image-size", "64",
                   "--preset", "tiny", "--batch-size", "4", "--threads", "1", "--workdir", str(work),
                   "--figure", str(tmp_path / "maskfree.png")])
    assert "| uniform grid, same cell count | stride 32 |" in capsys.readouterr().out
    results = json.loads((work / "results.json").read_text())
    assert len(results["learned"]) == len(results["random"]) == len(results["matched"]) == 1
    assert results["train"][0]["steps"] == 2 and np.isfinite(results["train"][0]["final_loss"])
    # long side 64 px: at most 2x2 final groups and 4x4 stride-16 groups (fewer on the short side)
    cells = {"3": 4, "2": 16}
    for name in ("learned", "random", "grid", "matched"):
        for level, n in cells.items():
            m = results[name][0][level]
            assert 0 < m["asa"] <= 1 and 0 <= m["br"] <= 1 and 0 <= m["bfrac"] < 1, (name, level, m)
            assert 1 <= m["nseg"] <= n, (name, level, m)
    for level, n in cells.items():
        assert results["grid"][0][level]["nseg"] > n / 2  # every cell of the grid is a segment
        # the matched grid has as many cells as the learned partition uses (to rounding)
        assert abs(results["matched"][0][level]["nseg"] - results["learned"][0][level]["nseg"]) <= 1.5
    assert (work / "seed0" / "backbone.pt").is_file()
    assert Image.open(tmp_path / "maskfree.png").size[0] > 6 * 64

    hierarchy = load_script("native_hierarchy")
    out = tmp_path / "hierarchy.png"
    hierarchy.main(["--backbone", str(work / "seed0"), "--root", str(tiny_coco_root), "--image-size", "64",
                    "--num-images", "2", "--out", str(out)])
    assert "trained" in capsys.readouterr().out
    image = Image.open(out)
    assert image.size[0] >= 4 * 64 and image.size[1] >= 2 * 40  # 4 columns, 2 rows


def test_reconstruction_loss_is_finite_and_reaches_every_grouping_layer():
    import torch

    from vitp.backbones.native import NativeBackbone

    maskfree = load_script("native_maskfree")
    torch.manual_seed(0)
    backbone = NativeBackbone.from_preset("tiny")
    images = torch.randn(2, 3, 64, 96)
    out = backbone(images)
    valid = maskfree.token_valid(out, [(64, 96), (40, 70)])
    assert valid.shape == (2, 16 * 24) and valid[0].all() and 0 < valid[1].sum() < valid[0].sum()
    loss = maskfree.reconstruction_loss(out, images, valid, levels=(1, 2, 3))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    for s, layer in enumerate(backbone.groupings):  # through the chain into every layer's keys
        assert layer.k.weight.grad is not None and layer.k.weight.grad.abs().sum() > 0, s
    # a flat image is reconstructed exactly by any partition
    flat = torch.zeros(1, 3, 64, 64)
    assert maskfree.reconstruction_loss(backbone(flat), flat).item() < 1e-5


def test_recon_weight_changes_training(tiny_coco_root: Path, tmp_path: Path, keep_threads):
    import torch

    maskfree = load_script("native_maskfree")
    common = ["--seeds", "0", "--epochs", "1", "--root", str(tiny_coco_root), "--image-size", "64",
              "--preset", "tiny", "--batch-size", "4", "--threads", "1", "--dense-locality", "4"]
    maskfree.main(common + ["--workdir", str(tmp_path / "off")])
    maskfree.main(common + ["--workdir", str(tmp_path / "on"), "--recon-weight", "1", "--recon-levels", "2", "3"])
    on = json.loads((tmp_path / "on" / "results.json").read_text())["train"][0]
    assert np.isfinite(on["final_recon"]) and on["final_recon"] > 0
    assert "final_recon" not in json.loads((tmp_path / "off" / "results.json").read_text())["train"][0]
    a = torch.load(tmp_path / "off" / "seed0" / "backbone.pt")
    b = torch.load(tmp_path / "on" / "seed0" / "backbone.pt")
    assert a.keys() == b.keys()
    changed = [k for k in a if k.startswith("groupings.") and not torch.equal(a[k], b[k])]
    assert any(k.startswith(f"groupings.{s}.k.") for k in changed for s in range(3)), changed
    assert all(any(k.startswith(f"groupings.{s}.") for k in changed) for s in range(3)), changed
