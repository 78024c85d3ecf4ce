"""``report.html`` (``vitp.report``): content, self-contained, written by ``vitp test`` with an
export folder, and rendered in real headless Chromium without console errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitp.report import ReportCollector
from vitp.structures import DatasetInfo, PanopticPrediction, Target

from test_cli import vitp_in_process
from test_predict_api import CONFIG, _args, run  # noqa: F401  (the tiny ViT-P fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _target(seed: int, info: DatasetInfo, image_path: str | None) -> tuple[Target, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, 4, (6, 8), generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1)
    labels = torch.randint(0, info.num_classes, (4,), generator=g)
    masks = torch.stack([seg == i for i in range(4)])
    target = Target(masks=masks, labels=labels, is_crowd=torch.zeros(4, dtype=torch.bool), segments=seg,
                    image_id=seed, file_name=f"img{seed}.png", orig_size=(48, 64), valid_size=(48, 64),
                    image_path=image_path)
    return target, labels


def _collector(tmp_path: Path) -> ReportCollector:
    info = DatasetInfo(class_names=("sky", "road", "car", "person"), category_ids=(1, 2, 3, 4),
                       is_thing=(False, False, True, True))
    rc = ReportCollector(info, images_shown=2)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    for seed in range(6):
        target, labels = _target(seed, info, str(tmp_path / "a.png"))
        wrong = (labels + 1) % 4
        half = torch.where(torch.arange(4) < seed % 4, labels, wrong)
        preds = {"proposer": PanopticPrediction(target.segments, wrong, torch.ones(4)),
                 "vitp": PanopticPrediction(target.segments, half if seed % 2 else wrong.roll(1), torch.ones(4)),
                 "oracle": PanopticPrediction(target.segments, labels, torch.ones(4))}
        rc.add_image(preds, target, target.file_name)
    rc.add_points(torch.eye(4)[torch.tensor([0, 1, 2, 3, 3, 2])][None] * 5, torch.tensor([[0, 1, 2, 3, 2, -1]]))
    return rc


def test_report_content_is_self_contained(tmp_path: Path):
    rc = _collector(tmp_path)
    assert rc.confusion.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]
    per_class = rc.per_class()
    assert set(per_class) == {"proposer", "vitp", "oracle"}
    assert all(v in (None, 100.0) for v in per_class["oracle"]["pq"])
    path = rc.write(tmp_path / "out", {"pq": 12.5, "pq_proposer": 3.0})
    text = path.read_text()
    assert "<table id=\"classes\">" in text and "<table id=\"confusion\">" in text
    assert text.count("data:image/png;base64,") >= 2  # helped and hurt galleries
    assert not re.search(r"(src|href)=\"(https?:)?//", text), "nothing may be fetched"


def _render(page: Path, tmp_path: Path) -> tuple[str, Path]:
    shot = tmp_path / f"{page.stem}.png"
    profile = tmp_path / f"profile-{page.stem}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--window-size=1400,2400", f"--screenshot={shot}", page.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return out.stdout + out.stderr, shot


def _pixels(image: np.ndarray, colour, tol: int = 3) -> int:
    """How many pixels of ``image`` are within ``tol`` of ``colour`` in every channel."""
    return int((np.abs(image.astype(int) - np.asarray(colour, dtype=int)).max(-1) <= tol).sum())


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path: Path):
    # the check itself: a page that throws must be caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>throw new Error('boom');</script></body></html>")
    log, _ = _render(bad, tmp_path)
    assert _console_errors(log), log[-2000:]
    collector = _collector(tmp_path)
    Image.new("RGB", (64, 48), (128, 128, 128)).save(tmp_path / "a.png")  # flat: the overlays' colours stay flat
    page = collector.write(tmp_path / "out", {"pq": 12.5})
    log, shot = _render(page, tmp_path)
    assert not _console_errors(log), _console_errors(log)
    assert shot.is_file()
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.std() > 10  # not a blank page
    # the screenshot shows the table (ViT-P's bars: #2a7 at opacity .35 on white), the confusion
    # matrix (a full cell: rgb(40, 90, 200)) and the galleries (the most common vivid colour of the
    # first embedded figure, at least as many pixels as in the figure itself)
    assert _pixels(image, (0.35 * np.array([34, 170, 119]) + 0.65 * 255).round()) > 200, "no ViT-P bars"
    assert _pixels(image, (40, 90, 200)) > 200, "no confusion matrix"
    import base64
    import io

    data = re.search(r'src="data:image/png;base64,([^"]+)"', page.read_text()).group(1)
    figure = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    flat = figure.reshape(-1, 3).astype(int)
    vivid = flat[flat.max(1) - flat.min(1) > 80]
    colours, counts = np.unique(vivid, axis=0, return_counts=True)
    colour = colours[counts.argmax()]
    assert counts.max() > 100 and _pixels(image, colour) >= counts.max(), f"the gallery's {colour} is not shown"
    if os.environ.get("VITP_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["VITP_KEEP_SCREENSHOT"])


def test_vitp_test_with_export_dir_writes_the_report(run, tmp_path: Path):  # noqa: F811
    os.chdir(run["workdir"])
    out = tmp_path / "export"
    vitp_in_process("test", "--config", str(CONFIG), *_args(run["root"]), "--ckpt_path", str(run["ckpt"]),
                    "--model.init_args.output.export_dir", str(out))
    text = (out / "report.html").read_text()
    assert "ViT-P PQ" in text and "oracle classes PQ" in text and "proposer alone PQ" in text
    assert "<table id=\"confusion\">" in text
