"""PointViT's point glimpse: the window it reads, its zero start, and that it trains."""

from __future__ import annotations

import pytest
import torch

from vitp.classifiers import GlimpseSettings, PointViT
from vitp.classifiers.glimpse import PointGlimpse
from vitp.structures import PointMasks

KW = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 64, "patch_size": 8}


def _point_at_pixel(row: int, col: int, h: int, w: int) -> torch.Tensor:
    return torch.tensor([[[2 * (row + 0.5) / h - 1, 2 * (col + 0.5) / w - 1]]])


def test_window_is_centred_on_the_point_and_zero_outside_the_frame():
    g = PointGlimpse(5, 8)
    image = torch.zeros(1, 3, 20, 30)
    image[0, :, 3, 7] = 1.0
    win = g.windows(image, *g.geometry(_point_at_pixel(3, 7, 20, 30), torch.tensor([[20, 30]])))
    assert win.shape == (1, 3, 5, 5)
    assert win[0, 0, 2, 2] == pytest.approx(1.0) and win.sum() == pytest.approx(3.0)              # the marked pixel, at the centre
    win = g.windows(image, *g.geometry(_point_at_pixel(3, 9, 20, 30), torch.tensor([[20, 30]])))
    assert win[0, 0, 2, 0] == pytest.approx(1.0)                                    # two pixels to the left
    # a point in the corner: the window hangs over the frame, read as zero padding
    image = torch.ones(1, 3, 20, 30)
    win = g.windows(image, *g.geometry(_point_at_pixel(0, 0, 20, 30), torch.tensor([[20, 30]])))
    assert win[0, 0, :2].abs().max() < 1e-6 and win[0, 0, :, :2].abs().max() < 1e-6 and win[0, 0, 2:, 2:].min() == pytest.approx(1.0)


def test_window_follows_the_valid_region_of_each_image():
    g = PointGlimpse(4, 8)
    images = torch.zeros(2, 3, 16, 16)
    images[1, :, 5, 3] = 1.0
    # image 1's valid region is 8 x 8 pixels of the padded frame
    points = torch.cat([_point_at_pixel(5, 3, 16, 16), _point_at_pixel(5, 3, 8, 8)])
    win = g.windows(images, *g.geometry(points, torch.tensor([[16, 16], [8, 8]])))
    assert win.shape == (2, 3, 4, 4)
    assert win[1, 0].sum() > 0.99 and win[0].sum() == 0


def test_glimpse_depends_only_on_its_window():
    torch.manual_seed(0)
    g = PointGlimpse(8, 16).eval()
    torch.nn.init.normal_(g.proj.weight)
    image = torch.randn(1, 3, 32, 32)
    point, vs = _point_at_pixel(10, 10, 32, 32), torch.tensor([[32, 32]])
    base = g(image, point, vs)
    far = image.clone()
    far[0, :, 25:, 25:] += 5.0
    near = image.clone()
    near[0, :, 9:12, 9:12] += 5.0
    torch.testing.assert_close(g(far, point, vs), base)
    assert (g(near, point, vs) - base).abs().max() > 1e-3


def test_untrained_glimpse_changes_nothing_and_training_uses_it():
    torch.manual_seed(0)
    plain = PointViT(4, model_name="vit_tiny_patch16_224", image_size=64, point_encoding="sample_patch",
                     point_locality_radius=2, model_kwargs=KW)
    torch.manual_seed(0)
    glimpse = PointViT(4, model_name="vit_tiny_patch16_224", image_size=64, point_encoding="sample_patch",
                       point_locality_radius=2, glimpse=GlimpseSettings(16), model_kwargs=KW)
    glimpse.load_state_dict(plain.state_dict(), strict=False)
    images, points, valid = torch.randn(2, 3, 64, 48), torch.rand(2, 6, 2) * 2 - 1, torch.tensor([[64, 48], [40, 48]])
    plain.eval(), glimpse.eval()
    torch.testing.assert_close(glimpse(images, points, valid), plain(images, points, valid))
    glimpse.train()
    opt = torch.optim.SGD(glimpse.parameters(), lr=0.1)
    labels = torch.randint(0, 4, (2 * 6,))
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(glimpse(images, points, valid).flatten(0, 1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert glimpse.point_glimpse.proj.weight.abs().sum() > 0
    assert glimpse.point_glimpse.convs[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("start", [0, 1])
def test_one_way_and_full_attention_agree_with_a_glimpse(start: int):
    torch.manual_seed(1)
    one_way = PointViT(3, model_name="vit_tiny_patch16_224", image_size=64, point_encoding="sample_pos_embed",
                       glimpse=GlimpseSettings(12), point_start_block=start, model_kwargs=KW).eval()
    torch.nn.init.normal_(one_way.point_glimpse.proj.weight, std=0.1)
    full = PointViT(3, model_name="vit_tiny_patch16_224", image_size=64, point_encoding="sample_pos_embed",
                    glimpse=GlimpseSettings(12), point_start_block=start, attention="full", model_kwargs=KW).eval()
    full.load_state_dict(one_way.state_dict())
    images, points = torch.randn(2, 3, 64, 64), torch.rand(2, 1, 2) * 2 - 1  # one point: full = one-way
    valid = torch.tensor([[64, 64], [48, 40]])
    torch.testing.assert_close(one_way(images, points, valid), full(images, points, valid), atol=1e-5, rtol=1e-4)


def test_bad_glimpse_size():
    with pytest.raises(ValueError, match="glimpse window"):
        PointViT(3, model_name="vit_tiny_patch16_224", glimpse=GlimpseSettings(2), model_kwargs=KW)


def test_mask_window_reads_the_point_own_mask_at_any_resolution():
    g = PointGlimpse(4, 8, masks=True)
    # the classifier's input is 16 x 16; the masks cover the same image at 32 x 32
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :16] = True          # top half
    masks[1, 16:] = True          # bottom half
    points = torch.cat([_point_at_pixel(3, 8, 16, 16), _point_at_pixel(12, 8, 16, 16), _point_at_pixel(12, 8, 16, 16)], 1)
    pm = PointMasks([masks], torch.tensor([[0, 1, -1]]))
    vs = torch.tensor([[16, 16]])
    win = g.mask_windows(pm, *g.geometry(points, vs), vs)
    assert win.shape == (3, 1, 4, 4)
    assert win[0].min() == pytest.approx(1.0) and win[1].min() == pytest.approx(1.0) and win[2].abs().max() == 0
    # a window across the border between the halves reads both
    win = g.mask_windows(PointMasks([masks], torch.tensor([[0]])), *g.geometry(_point_at_pixel(8, 8, 16, 16), vs), vs)
    assert win[0, 0, 0].mean() > 0.9 and win[0, 0, -1].mean() < 0.1


def test_mask_aware_classifier_needs_and_uses_the_masks():
    torch.manual_seed(0)
    m = PointViT(3, model_name="vit_tiny_patch16_224", image_size=64, point_encoding="sample_patch",
                 glimpse=GlimpseSettings(16, masks=True), model_kwargs=KW).eval()
    assert m.needs_point_masks
    torch.nn.init.normal_(m.point_glimpse.proj.weight, std=0.1)
    images, points, valid = torch.randn(1, 3, 64, 64), torch.zeros(1, 2, 2), torch.tensor([[64, 64]])
    with pytest.raises(ValueError, match="mask"):
        m(images, points, valid)
    disc = torch.zeros(2, 64, 64, dtype=torch.bool)
    disc[0, 28:36, 28:36] = True
    disc[1, 20:44, 30:34] = True
    a = m(images, points, valid, point_masks=PointMasks([disc], torch.tensor([[0, 1]])))
    assert (a[0, 0] - a[0, 1]).abs().max() > 1e-4          # same point, same image, other mask
    with pytest.raises(ValueError, match="refers to mask"):
        PointMasks([disc], torch.tensor([[0, 2]]))


def test_fewer_samples_cover_the_same_window():
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 10:18, 10:18] = 1.0                                 # an 8 x 8 square
    point, vs = _point_at_pixel(13, 13, 32, 32), torch.tensor([[32, 32]])
    full, coarse = PointGlimpse(16, 8), PointGlimpse(16, 8, samples=8)
    a, b = full.windows(image, *full.geometry(point, vs)), coarse.windows(image, *coarse.geometry(point, vs))
    assert a.shape == (1, 3, 16, 16) and b.shape == (1, 3, 8, 8)
    # the square covers the same share of the window at both sampling densities
    assert a[0, 0].mean() == pytest.approx(64 / 256, abs=0.02) and b[0, 0].mean() == pytest.approx(64 / 256, abs=0.05)
    masks = PointMasks([image[0, :1] > 0], torch.tensor([[0]]))
    torch.testing.assert_close(coarse.mask_windows(masks, *coarse.geometry(point, vs), vs)[0, 0], (b[0, 0] > 0.5).float())


def test_glimpse_head_adds_the_glimpse_own_logits():
    torch.manual_seed(0)
    m = PointViT(3, model_name="vit_tiny_patch16_224", image_size=64, point_encoding="sample_patch",
                 glimpse=GlimpseSettings(16, samples=8, head=True), model_kwargs=KW).eval()
    assert m.glimpse_head is not None and m.glimpse_head.out_features == 3
    torch.nn.init.normal_(m.point_glimpse.proj.weight, std=0.1)
    images, points, valid = torch.randn(2, 3, 64, 64), torch.rand(2, 4, 2) * 2 - 1, torch.tensor([[64, 64], [64, 40]])
    with_head = m(images, points, valid)
    m.head.weight.data.zero_(), m.head.bias.data.zero_()      # only the glimpse's own logits remain
    prepared, vs = m.prepare_images(images, valid)
    expected = m.glimpse_head(m.point_glimpse(prepared, points, vs))
    torch.testing.assert_close(m(images, points, valid), expected)
    assert (with_head - expected).abs().max() > 1e-4


def test_box_fitted_window_frames_the_segment_whatever_its_size():
    g = PointGlimpse(4, 8, samples=8, masks=True, fit_box=True)
    vs = torch.tensor([[32, 32]])
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)               # masks at twice the input resolution
    masks[0, 8:16, 8:16] = True                                    # a 4 x 4 input-pixel square at (4..8)
    masks[1, 20:60, 10:50] = True                                  # a 20 x 20 one at (10..30, 5..25)
    points = torch.cat([_point_at_pixel(5, 5, 32, 32), _point_at_pixel(12, 20, 32, 32), _point_at_pixel(1, 1, 32, 32)], 1)
    pm = PointMasks([masks], torch.tensor([[0, 1, -1]]))
    centres, extents = g.geometry(points, vs, pm)
    torch.testing.assert_close(centres[0, :2], torch.tensor([[6.0, 6.0], [20.0, 15.0]]))
    torch.testing.assert_close(extents[0], torch.tensor([4.4, 22.0, 4.0]))   # box side x 1.1; no mask: size
    win = g.mask_windows(pm, centres, extents, vs)[:, 0]
    # both squares fill the middle of their window alike: the same outline at any size
    assert win[0].sum() == win[1].sum() and win[0, 1:-1, 1:-1].all() and win[2].sum() == 0
    with pytest.raises(ValueError, match="masks"):
        PointGlimpse(4, 8, fit_box=True)


def test_jittered_masks_have_proposer_like_errors_and_follow_the_seed():
    from vitp.training.point_targets import jitter_masks

    masks = torch.zeros(6, 40, 40, dtype=torch.bool)
    for k in range(6):
        masks[k, 5 + k: 25 + k, 10:30] = True
    assert torch.equal(jitter_masks(masks, 0.0), masks)
    torch.manual_seed(1)
    first = jitter_masks(masks, 1.0, max_cell=8, max_shift=3)
    torch.manual_seed(1)
    assert torch.equal(jitter_masks(masks, 1.0, max_cell=8, max_shift=3), first)  # same seed, same masks
    assert not torch.equal(first, masks) and first.dtype == torch.bool
    inter = (first & masks).flatten(1).sum(1).float()
    iou = inter / (first | masks).flatten(1).sum(1)
    assert (iou > 0.3).all() and (iou < 1).any()  # still the same segment, not exactly it
    empty = torch.zeros(1, 40, 40, dtype=torch.bool)
    empty[0, 20, 20] = True                           # a one-pixel segment that coarsening would erase
    torch.manual_seed(0)
    assert jitter_masks(empty, 1.0, max_cell=16, max_shift=0).any()
