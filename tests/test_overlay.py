"""Overlays users can read (labels never overlap, a legend with colour, name and score), the score
threshold and grayscale input through ``vitp.Segmenter``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vitp.label_placement import _overlaps, place_labels
from vitp.structures import DatasetInfo, InstancePrediction, PanopticPrediction, Prediction
from vitp.visualize import render_prediction, segment_colours

from test_predict_api import CONFIG, _args, run  # noqa: F401  (the tiny ViT-P fixture)


def test_placed_labels_never_overlap_and_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = int(rng.integers(40, 300)), int(rng.integers(40, 300))
        n = int(rng.integers(1, 40))
        # crowded: anchors in a small area, as labels of many small segments are
        anchors = [(int(rng.integers(0, h // 3 + 1)), int(rng.integers(0, w // 3 + 1))) for _ in range(n)]
        sizes = [(int(rng.integers(10, 60)), int(rng.integers(8, 14))) for _ in range(n)]
        boxes = place_labels(anchors, sizes, (h, w))
        placed = [b for b in boxes if b is not None]
        assert placed, "the first label always fits"
        for (l, t, r, b), (tw, th) in zip([b for b in boxes if b is not None],
                                          [s for s, b in zip(sizes, boxes) if b is not None]):
            assert 0 <= l and 0 <= t and r <= w and b <= h
            assert (r - l, b - t) == (tw + 2, th + 2)
        for a, b in itertools.combinations(placed, 2):
            assert not _overlaps(a, b), (a, b)


def _prediction() -> tuple[np.ndarray, Prediction, DatasetInfo]:
    info = DatasetInfo(class_names=("sky", "dog", "cat"), is_thing=(False, True, True),
                       category_ids=(1, 2, 3))
    segments = -torch.ones((120, 160), dtype=torch.long)
    segments[:40] = 0
    segments[50:60, 10:20] = 1
    segments[52:62, 22:32] = 2  # two small segments side by side: labels would collide
    pan = PanopticPrediction(segments, torch.tensor([0, 1, 2]), torch.tensor([0.9, 0.35, 0.6]))
    inst = InstancePrediction(torch.zeros((0, 120, 160), dtype=torch.bool), torch.zeros(0, dtype=torch.long),
                              torch.zeros(0))
    image = np.full((120, 160, 3), 90, np.uint8)
    return image, Prediction(semantic=segments.clamp(min=0), panoptic=pan, instance=inst), info


def test_overlay_has_a_legend_with_every_segment_colour(tmp_path):
    image, pred, info = _prediction()
    out = render_prediction(image, pred, info, "panoptic", scores=True, legend=True)
    assert out.shape[0] == 120 and out.shape[1] > 160
    panel = out[:, 160:].reshape(-1, 3)
    colours = segment_colours(pred.panoptic.labels.numpy(), np.array(info.is_thing)).astype(np.uint8)
    for c in colours:  # each segment's swatch is drawn in its exact colour
        assert (panel == c).all(1).any(), c
    plain = render_prediction(image, pred, info, "panoptic")
    assert plain.shape == image.shape  # figures (scripts/make_figure.py) keep their size
    sem = render_prediction(image, pred, info, "semantic", legend=True)
    assert sem.shape[1] > 160
    from PIL import Image

    Image.fromarray(out).save(tmp_path / "overlay.png")


def test_segmenter_score_threshold_and_grayscale(run):  # noqa: F811
    from vitp import Segmenter

    seg = Segmenter.from_checkpoint(run["ckpt"], CONFIG, _args(run["root"]))
    rng = np.random.default_rng(0)
    gray = np.repeat(np.repeat(rng.integers(0, 256, (8, 10), dtype=np.uint8), 12, 0), 12, 1)
    a = seg(gray)
    b = seg(np.repeat(gray[..., None], 3, -1))
    assert a.segments == b.segments and np.array_equal(a.panoptic, b.panoptic)
    assert [i["score"] for i in a.instances] == [i["score"] for i in b.instances]
    assert len(a.instances) > 0
    t = float(np.median([i["score"] for i in a.instances]))
    cut = Segmenter.from_checkpoint(run["ckpt"], CONFIG, _args(run["root"]), score_threshold=t)(gray)
    assert 0 < len(cut.instances) < len(a.instances)
    assert all(i["score"] >= t for i in cut.instances) and all(s["score"] >= t for s in cut.segments)
    # max_image_side: post-processed at 40 px, mapped back to the image's size
    small = Segmenter.from_checkpoint(run["ckpt"], CONFIG, _args(run["root"]), max_image_side=40)(gray)
    assert small.panoptic.shape == gray.shape and small.semantic.shape == gray.shape
    assert len(small.instances) == len(a.instances) and small.instances[0]["mask"].shape == gray.shape
    assert small.overlay().size[0] > gray.shape[1]  # with the legend on the right


def _anchors_whole_image(segments: np.ndarray, num_segments: int) -> list:
    """The previous ``label_anchors``: each segment's distance transform over the whole image."""
    import cv2

    out = []
    for i in range(num_segments):
        mask = np.pad((segments == i).astype(np.uint8), 1)
        if not mask.any():
            out.append(None)
            continue
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
        y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        out.append((int(y) - 1, int(x) - 1))
    return out


def test_label_anchors_in_each_box_equal_the_whole_image_transform():
    """Anchors found inside each segment's box equal those of a distance transform over the whole
    image, on random maps with fragmented segments, segments on the border, void and absent ids."""
    from vitp.label_placement import label_anchors

    rng = np.random.default_rng(0)
    for case in range(40):
        h, w = rng.integers(5, 90, size=2)
        coarse = rng.integers(-1, 9, size=(rng.integers(1, 8), rng.integers(1, 8)))
        segments = np.kron(coarse, np.ones((h // coarse.shape[0] + 1, w // coarse.shape[1] + 1), int))[:h, :w]
        noise = rng.random((h, w)) < 0.05
        segments = np.where(noise, rng.integers(-1, 9, size=(h, w)), segments)
        n = int(rng.integers(1, 12))  # ids >= n are not segments of this map
        assert label_anchors(segments, n) == _anchors_whole_image(segments, n), case


def test_label_anchors_of_large_segments_are_their_own_interior_pixels():
    """Segments with a box longer than ``max_box_side`` are searched on a sampled grid: each anchor
    is a pixel of its segment, nearly as far from the border as the full search's (within the
    step, and the chamfer distance's few per cent); thin segments that the grid misses get the full
    search."""
    import cv2

    from vitp.label_placement import label_anchors

    rng = np.random.default_rng(1)
    h, w = 900, 1300
    coarse = rng.integers(-1, 6, size=(5, 7))
    segments = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR).round().astype(np.int64)
    segments[400:403, 100:1200] = 6  # a 3 px thin line: the 8-px grid may miss it
    fast = label_anchors(segments, 8, max_box_side=150)
    full = label_anchors(segments, 8, max_box_side=None)
    assert full == _anchors_whole_image(segments, 8)
    assert [a is None for a in fast] == [a is None for a in full] and fast[7] is None
    for i, (a, b) in enumerate(zip(fast, full)):
        if a is None:
            continue
        assert segments[a] == i
        dist = cv2.distanceTransform(np.pad((segments == i).astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        step = -(-max(np.ptp(np.nonzero(segments == i), axis=1) + 1) // 150)
        assert dist[a] >= 0.9 * dist[b] - 3 * step, (i, dist[a], dist[b], step)
    assert fast != full  # the sampled search moved some anchors


def _draw_labels_on_the_whole_image(image, segments, texts, font_size, order):
    """The previous ``draw_labels``: every label drawn on the whole image converted to PIL."""
    from PIL import Image, ImageDraw

    from vitp.label_placement import label_anchors, place_labels
    from vitp.visualize import _font

    h, w = image.shape[:2]
    font = _font(font_size)
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    anchors = label_anchors(segments, len(texts))
    order = [i for i in order if anchors[i] is not None and texts[i]]
    bboxes = [draw.textbbox((0, 0), texts[i], font=font) for i in order]
    boxes = place_labels([anchors[i] for i in order], [(x1 - x0 + 2, y1 - y0 + 2) for x0, y0, x1, y1 in bboxes], (h, w))
    for i, box, (x0, y0, _, _) in zip(order, boxes, bboxes):
        if box is not None:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(0, 0, 0))
            draw.text((box[0] + 2 - x0, box[1] + 2 - y0), texts[i], fill=(255, 255, 255), font=font)
    return np.asarray(pil).copy()


def _legend_on_a_whole_sheet(image, colours, texts, font_size):
    """The previous ``add_legend``: the image pasted onto a white sheet, the legend drawn on it."""
    from PIL import Image, ImageDraw

    from vitp.visualize import _font

    h = image.shape[0]
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row = max(probe.textbbox((0, 0), "Ag", font=font)[3] + 6, 12)
    swatch = row - 4
    width = max([probe.textbbox((0, 0), t, font=font)[2] for t in texts] + [probe.textbbox((0, 0), "+999 more", font=font)[2]])
    panel_w = min(swatch + width + 16, max(120, image.shape[1]))
    sheet = Image.new("RGB", (image.shape[1] + panel_w, h), (255, 255, 255))
    sheet.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(sheet)
    fits = max(0, (h - 4) // row)
    shown = len(texts) if len(texts) <= fits else max(0, fits - 1)
    x = image.shape[1] + 6
    for i in range(shown):
        y = 4 + i * row
        draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(int(c) for c in colours[i]), outline=(0, 0, 0))
        draw.text((x + swatch + 6, y), texts[i], fill=(0, 0, 0), font=font)
    if shown < len(texts):
        draw.text((x, 4 + shown * row), f"+{len(texts) - shown} more", fill=(0, 0, 0), font=font)
    return np.asarray(sheet).copy()


def test_labels_and_legend_drawn_in_pieces_equal_drawing_on_the_whole_image():
    """Labels drawn on their own pieces of the image and the legend panel drawn alone give the bytes
    of drawing both on the whole image (labels at the borders, long texts, several font sizes)."""
    from vitp.visualize import add_legend, draw_labels

    rng = np.random.default_rng(3)
    for case in range(12):
        h, w = (int(v) for v in rng.integers(20, 300, size=2))
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        coarse = rng.integers(-1, 7, size=(rng.integers(1, 5), rng.integers(1, 5)))
        segments = np.kron(coarse, np.ones((h // coarse.shape[0] + 1, w // coarse.shape[1] + 1), int))[:h, :w]
        texts = [None if k == 3 else "label " * int(rng.integers(1, 4)) + f"{k} {rng.random():.2f}" for k in range(7)]
        size = int(rng.choice([9, 13, 24]))
        order = list(rng.permutation(7))
        got = draw_labels(image, segments, texts, font_size=size, order=order)
        assert np.array_equal(got, _draw_labels_on_the_whole_image(image, segments, texts, size, order)), case
        legend_texts = [f"class {k} {rng.random():.2f}" for k in range(int(rng.integers(1, 30)))]
        colours = rng.integers(0, 256, size=(len(legend_texts), 3))
        assert np.array_equal(add_legend(got, colours, legend_texts, size),
                              _legend_on_a_whole_sheet(got, colours, legend_texts, size)), case


def test_tabulated_blend_equals_the_float_blend():
    """The overlay's blend read from a table per segment and channel gives the bytes of the float32
    blend it replaced (and white outlines, void untouched), without class names."""
    from vitp.visualize import _edges, overlay_panoptic

    rng = np.random.default_rng(1)
    for case in range(10):
        h, w = rng.integers(3, 120, size=2)
        n = int(rng.integers(1, 15)) if case else 300  # 300: indices beyond 2 bytes
        coarse = rng.integers(-1, n, size=(rng.integers(1, 9), rng.integers(1, 9)))
        segments = np.kron(coarse, np.ones((h // coarse.shape[0] + 1, w // coarse.shape[1] + 1), np.int64))[:h, :w]
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        labels = rng.integers(0, 7, size=n)
        is_thing = rng.random(7) < 0.5
        alpha = float(rng.choice([0.55, 0.3, 1.0]))
        colours = segment_colours(labels, is_thing)
        covered = segments >= 0
        colour = np.concatenate([colours, np.zeros((1, 3), np.float32)])[np.where(covered, segments, n)]
        expected = np.where(covered[..., None], (1 - alpha) * image.astype(np.float32) + alpha * colour,
                            image.astype(np.float32))
        expected[_edges(segments) & covered] = 255.0
        assert np.array_equal(overlay_panoptic(image, segments, labels, is_thing, alpha=alpha),
                              expected.astype(np.uint8)), case
    with pytest.raises(ValueError, match="uint8"):
        overlay_panoptic(image.astype(np.float32), segments, labels, is_thing)


def test_edges_equal_a_padded_reference():
    """Outline pixels (a 3 x 3 neighbourhood inside the image holds another value) from OpenCV's
    dilation and erosion equal the max / min over the nine shifted views of an edge-padded map, for
    the dtypes the overlays use (2-byte ids, int32 / int64 with void) and thin maps."""
    from vitp.visualize import _edges

    rng = np.random.default_rng(2)
    for case in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        coarse = rng.integers(-1, 5, size=(int(rng.integers(1, 6)), int(rng.integers(1, 6))))
        segments = np.kron(coarse, np.ones((h // coarse.shape[0] + 1, w // coarse.shape[1] + 1), np.int64))[:h, :w]
        segments = [segments, (segments + 1).astype(np.uint16), (segments * 70000).astype(np.int32)][case % 3]
        padded = np.pad(segments, 1, mode="edge")
        views = [padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
        expected = np.max(views, axis=0) != np.min(views, axis=0)
        assert np.array_equal(_edges(segments), expected), case
    assert _edges(np.zeros((0, 5), np.int64)).shape == (0, 5)


def test_segment_ids_are_one_plus_the_index_and_zero_outside():
    from vitp.label_placement import segment_ids

    in_range = np.array([[-1, 0], [2, 1]], dtype=np.int64)
    assert segment_ids(in_range, 3).tolist() == [[0, 1], [3, 2]] and segment_ids(in_range, 3).dtype == np.int32
    outside = np.array([[-2, 3], [2, 1 << 40]], dtype=np.int64)  # below void, past the count, past int32
    assert segment_ids(outside, 3).tolist() == [[0, 0], [3, 0]]
    assert segment_ids(np.zeros((0, 4), dtype=np.int64), 3).shape == (0, 4)
    assert segment_ids(np.array([[0, 5]], dtype=np.uint8), 6).tolist() == [[1, 6]]


def test_semantic_overlay_leaves_pixels_without_a_class_untouched():
    """Pixels of a semantic map outside the classes (-1, 255) are void in the overlay, whatever
    their value, and do not count in the legend's shares."""
    from vitp.export import semantic_areas

    image, pred, info = _prediction()
    sem = pred.panoptic.segments.clone()  # -1 below row 40 outside the two small squares
    with_255 = sem.clone()
    with_255[with_255 < 0] = 255
    a = render_prediction(image, Prediction(semantic=sem), info, "semantic", legend=True)
    b = render_prediction(image, Prediction(semantic=with_255), info, "semantic", legend=True)
    assert np.array_equal(a, b)
    assert (a[100:, :160] == image[100:]).all()  # void rows: the image itself
    assert semantic_areas(with_255, 3).tolist() == [40 * 160, 100, 100]
