"""What a generated image looks like: the categories, stuff textures, thing shapes and textures, the
layout of one image and its styles (``default`` and the held-out ``shapes``). Written to disk by
``vitp.data.synthetic``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

THING_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "disc"),
    (3, "tile"),
    (7, "triangle"),
    (12, "ring"),
    (18, "cross"),
    (27, "star"),
)
STUFF_CATEGORIES: tuple[tuple[int, str], ...] = (
    (92, "sky"),
    (118, "grass"),
    (130, "fence"),
    (149, "floor"),
    (184, "wall-brick"),
)
_PALETTE = (
    (220, 20, 60), (0, 0, 142), (119, 11, 32), (0, 60, 100), (250, 170, 30), (165, 42, 42),
    (70, 130, 180), (124, 252, 0), (190, 153, 153), (255, 228, 196), (146, 112, 198),
)


def categories() -> list[dict[str, Any]]:
    """COCO-panoptic style category records (non-contiguous ids, things first)."""
    cats = []
    for i, (cid, name) in enumerate(THING_CATEGORIES):
        cats.append({"id": cid, "name": name, "supercategory": "shape", "isthing": 1,
                     "color": list(_PALETTE[i])})
    for i, (cid, name) in enumerate(STUFF_CATEGORIES):
        cats.append({"id": cid, "name": name, "supercategory": "texture", "isthing": 0,
                     "color": list(_PALETTE[len(THING_CATEGORIES) + i])})
    return cats


# --------------------------------------------------------------------------------------------
# textures: (rng, yy, xx, params) -> float32[H, W, 3] in 0..255


def _rand_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _contrast(rng: np.random.Generator, c: np.ndarray) -> np.ndarray:
    return ((c + 128 + rng.uniform(-40, 40, size=3)) % 256).astype(np.float32)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[..., None].astype(np.float32)
    return a * (1 - t) + b * t


def _stuff_sky(rng, yy, xx, h, w):
    top = np.array([rng.uniform(40, 110), rng.uniform(90, 160), rng.uniform(180, 255)], np.float32)
    bottom = np.array([rng.uniform(180, 240), rng.uniform(200, 245), rng.uniform(220, 255)], np.float32)
    t = np.clip(yy / max(h - 1, 1) + rng.uniform(-0.2, 0.2), 0, 1)
    img = _mix(top, bottom, t)
    return img + rng.normal(0, 2.0, size=img.shape).astype(np.float32)


def _stuff_grass(rng, yy, xx, h, w):
    base = np.array([rng.uniform(20, 90), rng.uniform(100, 190), rng.uniform(10, 70)], np.float32)
    streak = rng.normal(0, 1, size=((h + 3) // 4, w)).astype(np.float32)
    streak = np.repeat(streak, 4, axis=0)[:h]
    fine = rng.normal(0, 1, size=(h, w)).astype(np.float32)
    v = 28 * streak + 12 * fine
    return base + v[..., None] * np.array([0.5, 1.0, 0.4], np.float32)


def _stuff_fence(rng, yy, xx, h, w):
    a, b = _rand_color(rng), _rand_color(rng)
    period = rng.uniform(6, 14)
    ang = rng.uniform(0, np.pi)
    u = yy * np.cos(ang) + xx * np.sin(ang)
    t = ((u / period) % 1.0) < 0.5
    return _mix(a, _contrast(rng, a) * 0.5 + b * 0.5, t)


def _stuff_floor(rng, yy, xx, h, w):
    a = _rand_color(rng)
    b = _contrast(rng, a)
    period = rng.uniform(8, 20)
    t = ((np.floor(yy / period) + np.floor(xx / period)) % 2).astype(np.float32)
    return _mix(a, b, t)


def _stuff_brick(rng, yy, xx, h, w):
    bh = rng.uniform(7, 13)
    bw = bh * rng.uniform(1.8, 2.6)
    row = np.floor(yy / bh)
    xs = xx + (row % 2) * bw / 2
    col = np.floor(xs / bw)
    brick = np.array([rng.uniform(120, 200), rng.uniform(40, 90), rng.uniform(20, 70)], np.float32)
    mortar = np.full(3, rng.uniform(170, 230), np.float32)
    ri, ci = row.astype(np.int64), col.astype(np.int64)
    var = (((ri * 73856093) ^ (ci * 19349663)) % 97).astype(np.float32) / 97.0 - 0.5
    img = brick + 40 * var[..., None]
    line = ((yy % bh) < 1.3) | ((xs % bw) < 1.3)
    img[line] = mortar
    return img


STUFF_TEXTURES: tuple[Callable, ...] = (_stuff_sky, _stuff_grass, _stuff_fence, _stuff_floor, _stuff_brick)

STYLES: dict[str, str] = {
    "default": "things defined by shape and texture; stuff as Voronoi regions; aspect 0.7-1",
    "shapes": "held-out style: a thing's class is its shape alone (texture drawn at random per instance, "
              "random colours); stuff as texture bands; aspect 0.45-0.75",
}
"""Generation styles. ``shapes`` is vitp's held-out check: never tune on it."""


# --------------------------------------------------------------------------------------------
# things: shape masks and textures in the object's rotated frame (u, v relative to centre)


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    d2 = u * u + v * v
    if kind == 0:  # disc
        return d2 <= r * r
    if kind == 1:  # tile (square)
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    if kind == 2:  # triangle (equilateral, circumradius r)
        m = np.ones(u.shape, bool)
        for k in range(3):
            a = np.pi / 2 + k * 2 * np.pi / 3
            m &= (u * np.cos(a) + v * np.sin(a)) >= -0.5 * r
        return m
    if kind == 3:  # ring
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == 4:  # cross
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3 * r) & (av <= r)) | ((av <= 0.3 * r) & (au <= r))
    if kind == 5:  # five-pointed star
        phi = np.arctan2(v, u)
        lim = r * (0.42 + 0.58 * ((np.cos(5 * phi) + 1) / 2) ** 2)
        return d2 <= lim * lim
    raise ValueError(kind)


def _thing_texture(kind: int, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    base = _rand_color(rng)
    other = _contrast(rng, base)
    if kind == 0:  # dots
        p = max(r / 2.5, 3.0)
        du = (u / p) % 1.0 - 0.5
        dv = (v / p) % 1.0 - 0.5
        return _mix(base, other, (du * du + dv * dv) < 0.09)
    if kind == 1:  # stripes
        p = max(r / 3.0, 3.0)
        return _mix(base, other, ((u / p) % 1.0) < 0.5)
    if kind == 2:  # solid
        return np.broadcast_to(base, u.shape + (3,)).astype(np.float32) + rng.normal(
            0, 3, size=u.shape + (3,)).astype(np.float32)
    if kind == 3:  # radial gradient
        t = np.clip(np.sqrt(u * u + v * v) / max(r, 1e-6), 0, 1)
        return _mix(base, other, t)
    if kind == 4:  # small checker
        p = max(r / 4.0, 2.0)
        return _mix(base, other, ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32))
    if kind == 5:  # speckles
        t = rng.uniform(0, 1, size=u.shape) < 0.3
        return _mix(base, other, t)
    raise ValueError(kind)


def _render_thing(kind, rng, yy, xx, cy, cx, r, theta, texture: int | None = None):
    """Mask and texture of one thing; ``texture`` defaults to the class's own (``kind``)."""
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    mask = _shape_mask(kind, u, v, r)
    tex = _thing_texture(kind if texture is None else texture, rng, u, v, r)
    return mask, tex


# --------------------------------------------------------------------------------------------


def _boundary(lab: np.ndarray) -> np.ndarray:
    b = np.zeros(lab.shape, bool)
    b[1:] |= lab[1:] != lab[:-1]
    b[:-1] |= lab[1:] != lab[:-1]
    b[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    b[:, :-1] |= lab[:, 1:] != lab[:, :-1]
    return b


def generate_image(rng: np.random.Generator, image_size: int, min_area: int = 12, style: str = "default"):
    """One image: ``(rgb uint8[H,W,3], ids int64[H,W] (0 = void), segments list[dict])``.

    ``segments`` entries: ``id``, ``category_id``, ``iscrowd``. ``style``: see :data:`STYLES`.

    Long on purpose: one sequence of random draws from ``rng``; cutting it into helpers risks
    reordering the draws, which would change the generated files the tests pin byte for byte.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {tuple(STYLES)}")
    shapes = style == "shapes"
    long_side = image_size
    short_side = int(round(image_size * (rng.uniform(0.45, 0.75) if shapes else rng.uniform(0.7, 1.0))))
    h, w = (short_side, long_side) if rng.uniform() < 0.6 else (long_side, short_side)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mind = min(h, w)

    img = np.zeros((h, w, 3), np.float32)
    ids = np.zeros((h, w), np.int64)
    segs: list[dict[str, Any]] = []

    minimal = rng.uniform() < 0.06
    # --- stuff
    k = 1 if minimal else int(rng.choice([1, 2, 3], p=[0.15, 0.5, 0.35]))
    stuff_cls = rng.choice(len(STUFF_CATEGORIES), size=k, replace=False)
    if k == 1:
        region = np.zeros((h, w), np.int64)
    elif shapes:  # bands along a random direction with wavy borders
        ang = rng.uniform(0, np.pi)
        u = yy * np.cos(ang) + xx * np.sin(ang)
        u = u + rng.uniform(0, 0.06 * mind) * np.sin((yy * np.sin(ang) - xx * np.cos(ang)) * rng.uniform(0.03, 0.1))
        cuts = np.sort(rng.uniform(u.min(), u.max(), size=k - 1))
        region = np.searchsorted(cuts, u)
    else:
        py = rng.uniform(0, h, size=k)
        px = rng.uniform(0, w, size=k)
        amp, freq, ph = rng.uniform(0, 0.08 * mind), rng.uniform(0.02, 0.08), rng.uniform(0, 6.3)
        wy = yy + amp * np.sin(xx * freq + ph)
        wx = xx + amp * np.cos(yy * freq + ph)
        d = (wy[None] - py[:, None, None]) ** 2 + (wx[None] - px[:, None, None]) ** 2
        region = d.argmin(0)
    for j, sc in enumerate(stuff_cls):
        m = region == j
        if not m.any():
            continue
        tex = STUFF_TEXTURES[int(sc)](rng, yy, xx, h, w)
        img[m] = tex[m]
        sid = STUFF_CATEGORIES[int(sc)][0] * 1000 + 1
        ids[m] = sid
        segs.append({"id": sid, "category_id": STUFF_CATEGORIES[int(sc)][0], "iscrowd": 0})
    if not minimal and k > 1 and rng.uniform() < 0.5:  # thin unlabelled borders
        ids[_boundary(region)] = 0
    if not minimal and rng.uniform() < 0.2:  # unlabelled noise patch
        ph_, pw_ = int(rng.uniform(0.1, 0.3) * h), int(rng.uniform(0.1, 0.3) * w)
        y0, x0 = int(rng.integers(0, h - ph_)), int(rng.integers(0, w - pw_))
        img[y0:y0 + ph_, x0:x0 + pw_] = rng.uniform(0, 255, size=(ph_, pw_, 3))
        ids[y0:y0 + ph_, x0:x0 + pw_] = 0

    # --- things (painted in order: later ones occlude earlier ones)
    if not minimal:
        n_things = int(rng.integers(0, 8))
        crowd_at = int(rng.integers(0, n_things + 1)) if rng.uniform() < 0.25 else -1
        counter = 0
        for t in range(n_things + 1):
            if t == crowd_at:
                kind = int(rng.integers(0, len(THING_CATEGORIES)))
                cid = THING_CATEGORIES[kind][0]
                ccy, ccx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
                spread = 0.12 * mind
                union = np.zeros((h, w), bool)
                for _ in range(int(rng.integers(5, 11))):
                    r = mind * rng.uniform(0.025, 0.05)
                    cy, cx = ccy + rng.normal(0, spread / 2), ccx + rng.normal(0, spread / 2)
                    texture = int(rng.integers(0, len(THING_CATEGORIES))) if shapes else None
                    m, tex = _render_thing(kind, rng, yy, xx, cy, cx, r, rng.uniform(0, 2 * np.pi), texture)
                    img[m] = tex[m]
                    union |= m
                counter += 1
                sid = cid * 1000 + 100 + counter
                ids[union] = sid
                segs.append({"id": sid, "category_id": cid, "iscrowd": 1})
            if t == n_things:
                break
            kind = int(rng.integers(0, len(THING_CATEGORIES)))
            cid = THING_CATEGORIES[kind][0]
            r = mind * float(np.exp(rng.uniform(np.log(0.06), np.log(0.25))))
            cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
            texture = int(rng.integers(0, len(THING_CATEGORIES))) if shapes else None
            m, tex = _render_thing(kind, rng, yy, xx, cy, cx, r, rng.uniform(0, 2 * np.pi), texture)
            if not m.any():
                continue
            img[m] = tex[m]
            counter += 1
            sid = cid * 1000 + 100 + counter
            ids[m] = sid
            segs.append({"id": sid, "category_id": cid, "iscrowd": 0})

    img += rng.normal(0, 3.0, size=img.shape).astype(np.float32)
    rgb = np.clip(np.round(img), 0, 255).astype(np.uint8)

    # drop segments too small to keep (their pixels become void)
    kept = []
    present, counts = np.unique(ids, return_counts=True)
    area = dict(zip(present.tolist(), counts.tolist()))
    for s in segs:
        a = area.get(s["id"], 0)
        if a < min_area:
            if a:
                ids[ids == s["id"]] = 0
            continue
        kept.append(s)
    return rgb, ids, kept
