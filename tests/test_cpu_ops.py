"""The CPU shortcuts of ``vitp.cpu_ops`` and the flood-filled point components give exactly what
torch's own ops and a full labelling of the parts give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from vitp.cpu_ops import above, any_along
from vitp.points import pixel_to_point
from vitp.proposal_geometry import point_components


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("inclusive", [False, True])
def test_above_equals_torch_comparison(dtype: torch.dtype, inclusive: bool) -> None:
    torch.manual_seed(0)
    values = (torch.randn(7, 33, 21) * 3).round().to(dtype)  # many exact ties with the threshold
    for threshold in (0.0, 1.0, -2.0):
        expected = values >= threshold if inclusive else values > threshold
        got = above(values, threshold, inclusive)
        assert got.dtype == torch.bool and torch.equal(got, expected)
    strided = values.transpose(0, 2)[:, 3:]  # a non-contiguous view
    assert torch.equal(above(strided), strided > 0)
    with torch.inference_mode():
        assert torch.equal(above(values), values > 0)
    grad = torch.randn(4, 5, requires_grad=True)
    assert torch.equal(above(grad), grad > 0)


def test_any_along_equals_any() -> None:
    masks = torch.rand(5, 9, 11) > 0.9
    for dim in (0, 1, 2):
        assert torch.equal(any_along(masks, dim), masks.any(dim))


def _reference_components(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Label every 8-connected part and keep the one under each point (the previous implementation's rule)."""
    out = masks.clone()
    h, w = masks.shape[1:]
    for k, (y, x) in enumerate(points.tolist()):
        r, c = min(int((y + 1) / 2 * h), h - 1), min(int((x + 1) / 2 * w), w - 1)
        if not masks[k, r, c]:
            continue
        labels, count = ndimage.label(masks[k].numpy(), structure=np.ones((3, 3)))
        if count > 1:
            out[k] = torch.from_numpy(labels == labels[r, c])
    return out


def test_point_components_equal_a_full_labelling_on_random_blobs() -> None:
    torch.manual_seed(0)
    for h, w in ((37, 53), (64, 64), (5, 90)):
        # smooth random fields cut at 0: several blobs per mask, diagonal contacts, parts at the borders
        masks = F.interpolate(torch.randn(40, 1, h // 4 + 2, w // 4 + 2), size=(h, w), mode="bilinear")[:, 0] > 0.3
        masks[0] = False
        masks[1] = True
        rows, cols = torch.randint(0, h, (40,)), torch.randint(0, w, (40,))
        points = pixel_to_point(rows, cols, (h, w))
        before = masks.clone()
        got = point_components(masks, points)
        expected = _reference_components(masks, points)
        assert torch.equal(got, expected)
        assert torch.equal(masks, before) and (got != masks).any()  # some masks were cut, in a copy
        whole = masks[:2].clone()
        assert point_components(whole, points[:2]) is whole  # nothing to cut: no copy
        assert point_components(masks, points, inplace=True) is masks and torch.equal(masks, expected)


def test_mask_boxes_equal_the_extent_of_every_mask() -> None:
    from vitp.points import mask_boxes

    torch.manual_seed(0)
    masks = torch.rand(30, 17, 41) > 0.995  # sparse: single pixels, thin boxes, empty masks
    masks[3] = False
    masks[4, -1, -1] = True
    boxes = mask_boxes(masks)
    assert boxes.dtype == torch.long and boxes.shape == (30, 4)
    for m, box in zip(masks, boxes.tolist()):
        rows, cols = np.nonzero(m.numpy())
        expected = [rows.min(), cols.min(), rows.max(), cols.max()] if len(rows) else [41, 41, -1, -1]
        assert box == expected
    assert mask_boxes(masks[:0]).shape == (0, 4)


@pytest.mark.parametrize("with_scores", [False, True])
def test_first_argmax_is_the_first_maximum(with_scores: bool) -> None:
    from vitp.rule_out import first_argmax

    torch.manual_seed(0)
    values = torch.randint(0, 4, (9, 13, 17)).float() / 4  # many ties: the first maximum wins
    scores = torch.tensor([1.0, 2.0, 0.5, 1.0, 2.0, 4.0, 1.0, 0.25, 2.0]) if with_scores else None
    expected = (values if scores is None else scores[:, None, None] * values).argmax(0)
    got = first_argmax(scores, values)
    assert got.dtype == torch.long and torch.equal(got, expected)
    assert torch.equal(first_argmax(scores, values.transpose(1, 2)), first_argmax(scores, values).T)  # strided
    assert torch.equal(first_argmax(scores, values.bfloat16()), expected)  # torch's own loop
    assert torch.equal(first_argmax(None, values[:1]), torch.zeros(13, 17, dtype=torch.long))
