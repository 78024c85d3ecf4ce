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
