"""The studies of issue 24 (``vitp study ...``) and the inference point rules they compare.

Point rules: every rule's point lies in its proposal's mask, also where the centroid does not
(a "C" shape); argmax is ``select_points`` unchanged. Studies: each runs end to end on the tiny
generated dataset (in-process ``vitp`` commands), writes markdown + CSV + its commands, and a
second run skips the finished cells. The cost table is read and overridden.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT
from vitp.point_rules import POINT_RULES, select_points_by_rule
from vitp.points import point_to_pixel
from vitp.proposal_geometry import select_points


def c_shape_logits(h: int = 16, w: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits float[1, 2, h, w]`` of two proposals (a "C" whose centroid lies outside it, and a
    small blob) and their masks ``bool[2, h, w]`` (logit > 0)."""
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 2:14, 2:14] = True
    masks[0, 5:11, 5:14] = False  # the C's opening: its centroid (about (7.5, 6)) is outside
    masks[1, 3:6, 15:19] = True
    logits = torch.where(masks, 1.0, -2.0) + torch.linspace(0, 0.5, h * w).reshape(h, w)
    logits[0, 2, 2] = 9.0  # argmax in a corner of the C
    return logits[None], masks


@pytest.mark.parametrize("rule", POINT_RULES)
@pytest.mark.parametrize("top_k", [1, 3])
def test_point_rules_give_points_inside_the_mask(rule: str, top_k: int):
    if rule == "centroid" and top_k > 1:
        pytest.skip("centroid gives one point")
    logits, masks = c_shape_logits()
    h, w = masks.shape[-2:]
    points = select_points_by_rule(logits, [[4 * h, 4 * w]], (4 * h, 4 * w), rule, top_k)
    assert points.shape == (1, 2, top_k, 2)
    for q in range(2):
        rows, cols = point_to_pixel(points[0, q], (h, w))
        assert masks[q, rows, cols].all(), (rule, q, rows.tolist(), cols.tolist())


def test_point_rules_differ_and_argmax_is_unchanged():
    logits, masks = c_shape_logits()
    h, w = masks.shape[-2:]
    args = ([[4 * h, 4 * w]], (4 * h, 4 * w))
    assert torch.equal(select_points_by_rule(logits, *args, "argmax", 2), select_points(logits, *args, 2))
    cells = {}
    for rule in POINT_RULES:
        rows, cols = point_to_pixel(select_points_by_rule(logits, *args, rule, 1)[0, 0, 0], (h, w))
        cells[rule] = (int(rows), int(cols))
    assert cells["argmax"] == (2, 2)
    assert cells["centroid"] != (7, 6) and masks[0][cells["centroid"]]  # snapped into the C
    # interior: the C's arms are 3 cells thick, so its deepest cells are 2 cells from the outside
    from scipy import ndimage
    depth = ndimage.distance_transform_edt(torch.nn.functional.pad(masks[0], (1, 1, 1, 1)).numpy())[1:-1, 1:-1]
    assert depth[cells["interior"]] == depth.max()


def test_point_rule_random_is_seeded_and_rejects_bad_settings():
    logits, _ = c_shape_logits()
    args = ([[64, 80]], (64, 80))
    a = select_points_by_rule(logits, *args, "random", 4, seed=1)
    assert torch.equal(a, select_points_by_rule(logits, *args, "random", 4, seed=1))
    assert not torch.equal(a, select_points_by_rule(logits, *args, "random", 4, seed=2))
    with pytest.raises(ValueError, match="centroid"):
        select_points_by_rule(logits, *args, "centroid", 2)
    with pytest.raises(ValueError, match="unknown"):
        select_points_by_rule(logits, *args, "median", 1)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- cost table, sources
def test_cost_table_defaults_sources_and_override(tmp_path: Path):
    from vitp.studies.costs import DEFAULT_COSTS, costs_markdown, load_costs

    costs = load_costs()
    assert costs["fine_mask"].seconds == pytest.approx(79.2) and costs["box"].seconds == pytest.approx(7.0)
    assert all(c.source for c in costs.values())
    assert "Papadopoulos" in costs_markdown(costs)
    (tmp_path / "c.yaml").write_text("fine_mask: 60\nbox: {seconds: 30, source: drawn boxes}\n")
    over = load_costs(tmp_path / "c.yaml")
    assert over["fine_mask"].seconds == 60 and "user override" in over["fine_mask"].source
    assert over["box"].seconds == 30 and over["box"].source == "drawn boxes"
    assert over["click"] == DEFAULT_COSTS["click"]
    (tmp_path / "c.json").write_text(json.dumps({"click": 1.5}))
    assert load_costs(tmp_path / "c.json")["click"].seconds == 1.5
    (tmp_path / "bad.yaml").write_text("polygon: 3\n")
    with pytest.raises(ValueError, match="unknown annotation kind"):
        load_costs(tmp_path / "bad.yaml")


def test_budget_buys_leading_images_at_the_source_cost():
    from vitp.studies.costs import load_costs
    from vitp.studies.supervision import image_costs, images_within, parse_source

    costs = load_costs()
    images = [(i, 5) for i in range(100)]  # 5 segments each
    fine = image_costs(parse_source("fine"), images, costs)
    assert fine[0] == pytest.approx(5 * 79.2)
    assert images_within(1000, fine) == (2, pytest.approx(2 * 5 * 79.2))
    assert image_costs(parse_source("clicks3"), images, costs)[0] == pytest.approx(5 * 3 * costs["click"].seconds)
    mix = image_costs(parse_source("fine:0.1+box:0.9"), images, costs)
    n_fine = sum(c == pytest.approx(5 * 79.2) for c in mix)
    assert 3 <= n_fine <= 20 and all(c in (pytest.approx(5 * 79.2), pytest.approx(35.0)) for c in mix)
    with pytest.raises(ValueError):
        parse_source("scribbles")


def test_click_sampler_points_are_fixed_clicks_inside_their_segment(tiny_coco_root: Path):
    from vitp.data.coco import CocoPanopticDataModule
    from vitp.studies.supervision import ClickSampler, FixedMixSampler, choose

    dm = CocoPanopticDataModule(root=str(tiny_coco_root), image_size=112, num_workers=0, batch_size=2)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    target = batch.targets[0]
    sampler = ClickSampler(num_points=64, clicks=2)
    rows, cols, labels = sampler.click_pixels(target)
    h, w = target.valid_size
    masks = target.masks[:, :h, :w]
    assert len(labels) == 2 * int((~target.is_crowd).sum())
    for r, c, lab in zip(rows.tolist(), cols.tolist(), labels.tolist()):
        assert any(masks[k, r, c] and int(target.labels[k]) == lab for k in range(len(masks)))
    a = sampler(target, torch.Generator().manual_seed(0))[0]
    b = sampler(target, torch.Generator().manual_seed(1))[0]
    clicks = {tuple(p) for p in torch.stack([rows, cols], 1).tolist()}
    for points in (a, b):  # any draw only ever returns the same few clicked pixels
        got = {tuple(p) for p in torch.stack(point_to_pixel(points, (h, w)), 1).tolist()}
        assert got <= clicks
    mix = FixedMixSampler([ClickSampler(8, 1), ClickSampler(8, 2)], [0.5, 0.5])
    assert mix.choice(target.image_id) == choose([0.5, 0.5], target.image_id)


# ----------------------------------------------------------------------------- the studies, end to end
FAST = ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
        "--data.init_args.eval_batch_size", "2", "--data.init_args.image_size", "128",
        "--model.init_args.classifier.init_args.image_size", "128", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2"]
CONFIG = str(PROJECT_ROOT / "configs" / "synthetic" / "vitp" / "tiny_oracle_masks.yaml")


def study(*args: str) -> None:
    """``vitp study ARGS`` in this process (exits with status 0)."""
    from vitp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["study", *args])
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def budget_run(tiny_coco_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The annotation-budget study on the tiny dataset: fine masks and boxes at one budget, one seed."""
    import os

    out = tmp_path_factory.mktemp("budget") / "study"
    cwd = os.getcwd()
    os.chdir(out.parent)
    try:
        study("annotation-budget", "--config", CONFIG, "--out", str(out), "--sources", "fine", "box",
              "--budgets", "2000", "--seeds", "0", "--equal_steps", "2", "--", "--data.init_args.root",
              str(tiny_coco_root), *FAST)
    finally:
        os.chdir(cwd)
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_annotation_budget_study_writes_table_plot_and_commands(budget_run: Path, tiny_coco_root: Path):
    from vitp.studies import config as cfg
    from vitp.studies.costs import load_costs
    from vitp.studies.supervision import image_costs, images_within, parse_source

    rows = {r["source"]: r for r in read_rows(budget_run / "annotation_budget.csv")}
    assert set(rows) == {"fine", "box"}
    images = cfg.training_images(tiny_coco_root / "annotations" / "panoptic_train2017.json")
    for name, row in rows.items():
        n, spent = images_within(2000, image_costs(parse_source(name), images, load_costs()))
        assert int(row["images"]) == n and float(row["spent_s"]) == pytest.approx(spent, abs=0.1)
        for key in ("pq", "pq_th", "miou", "map", "point_acc"):
            assert 0.0 <= float(row[key]) <= 100.0, (name, key, row[key])
    assert int(rows["fine"]["images"]) < int(rows["box"]["images"])  # masks cost more than boxes
    table = (budget_run / "annotation_budget.md").read_text()
    assert "| fine |" in table and "| box |" in table and "Lin et al. 2014" in table
    assert (budget_run / "annotation_budget.png").stat().st_size > 1000
    commands = (budget_run / "commands.md").read_text()
    assert commands.count("`vitp fit ") == 2 and commands.count("`vitp validate ") == 2
    assert "--data.init_args.max_train_samples " + rows["fine"]["images"] in commands
    assert "vitp.points.BoxSampler" in commands
    assert commands.count("--trainer.max_steps 2 ") == 2  # --equal_steps
    assert all(json.loads((budget_run / "cells" / c / "step0.json").read_text())["argv"][-1] == "0"
               for c in ("fine_b2000_s0", "box_b2000_s0"))  # ... last, so it wins (limit_val_batches 0)


def test_annotation_budget_study_resumes_without_recomputing(budget_run: Path, tiny_coco_root: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    import vitp.studies.runner as runner

    ckpt = budget_run / "cells" / "fine_b2000_s0" / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    calls: list[list[str]] = []
    monkeypatch.setattr(runner, "run_vitp", lambda argv: calls.append(list(argv)) or {})  # must not run
    monkeypatch.chdir(budget_run.parent)
    study("annotation-budget", "--config", CONFIG, "--out", str(budget_run), "--sources", "fine", "box",
          "--budgets", "2000", "--seeds", "0", "--equal_steps", "2", "--", "--data.init_args.root",
          str(tiny_coco_root), *FAST)
    assert calls == [] and ckpt.stat().st_mtime_ns == before
    assert (budget_run / "commands.md").read_text().count("skipped (done earlier)") == 4
    assert len(read_rows(budget_run / "annotation_budget.csv")) == 2


def test_annotation_budget_costs_override_reaches_the_study(tiny_coco_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "costs.yaml").write_text("fine_mask: 1000000\n")
    study("annotation-budget", "--config", CONFIG, "--out", str(tmp_path / "o"), "--sources", "fine",
          "--budgets", "2000", "--seeds", "0", "--costs", str(tmp_path / "costs.yaml"), "--",
          "--data.init_args.root", str(tiny_coco_root), *FAST)
    (row,) = read_rows(tmp_path / "o" / "annotation_budget.csv")
    assert row["images"] == "0" and row["note"] == "budget buys no image"
    assert "1e+06 | segment (polygon) | user override" in (tmp_path / "o" / "annotation_budget.md").read_text()


def test_point_assignment_study_matches_validate_and_resumes(budget_run: Path, tiny_coco_root: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vitp.studies.runner import run_vitp

    monkeypatch.chdir(tmp_path)
    ckpt = budget_run / "cells" / "box_b2000_s0" / "checkpoints" / "last.ckpt"
    data = ["--data.init_args.root", str(tiny_coco_root), *FAST[:8]]
    args = ("point-assignment", "--config", CONFIG, "--out", str(tmp_path / "pa"), "--ckpt_path", str(ckpt),
            "--rules", "argmax", "interior", "centroid", "top2", "random", "--", *data)
    study(*args)
    rows = {r["rule"]: r for r in read_rows(tmp_path / "pa" / "point_assignment.csv")}
    assert set(rows) == {"oracle", "argmax", "interior", "centroid", "top2", "random"}
    assert float(rows["oracle"]["pq"]) == pytest.approx(100.0)  # ground-truth masks, ground-truth classes
    for rule in ("argmax", "interior", "centroid", "top2", "random"):
        for key in ("acc_small", "select_ms", "classify_ms", "map_small"):
            assert rows[rule][key] != "", (rule, key)
    # argmax is the default: the study's own pass gives exactly what `vitp validate` gives
    validated = run_vitp(["validate", "--config", CONFIG, "--ckpt_path", str(ckpt), "--trainer.logger", "false",
                          "--trainer.enable_progress_bar", "false", *data])
    for key in ("pq", "miou", "map"):
        assert float(rows["argmax"][key]) == pytest.approx(validated[key], abs=1e-3), key
    assert "| interior |" in (tmp_path / "pa" / "point_assignment.md").read_text()
    before = (tmp_path / "pa" / "cells" / "ckpt0_argmax" / "result.json").stat().st_mtime_ns
    study(*args)
    assert (tmp_path / "pa" / "cells" / "ckpt0_argmax" / "result.json").stat().st_mtime_ns == before
    assert "skipped (done earlier): every rule" in (tmp_path / "pa" / "commands.md").read_text()


def test_domain_shift_study_trains_on_each_style_and_tests_on_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    sizes = ["--data.init_args.synthetic_num_train", "6", "--data.init_args.synthetic_num_val", "4",
             "--data.init_args.synthetic_image_size", "112"]
    study("domain-shift", "--config", CONFIG, "--out", str(tmp_path / "ds"), "--seeds", "0", "--", *sizes, *FAST)
    rows = read_rows(tmp_path / "ds" / "domain_shift.csv")
    assert {(r["train"], r["test"], r["shift"]) for r in rows} == {
        ("default", "default", "in-domain"), ("default", "shapes", "shifted"),
        ("shapes", "default", "shifted"), ("shapes", "shapes", "in-domain")}
    for row in rows:
        assert 0.0 <= float(row["point_acc"]) <= 100.0 and 0.0 <= float(row["pq"]) <= 100.0
    assert (tmp_path / "ds" / "data" / "shapes" / "annotations" / "panoptic_val2017.json").is_file()
    commands = (tmp_path / "ds" / "commands.md").read_text()
    assert commands.count("`vitp fit ") == 2 and commands.count("`vitp validate ") == 4
