"""One synthetic street scene: an RGB picture with its Cityscapes labelIds and instanceIds.

The scene is laid out like a street photographed from a car: a horizon and a vanishing point, a road
narrowing towards it, sidewalks, building facades with windows, trees, poles with signs, people and
cars sized by their distance. Colours are drawn from overlapping distributions (grey road, grey
facades, grey overcast sky; cars and clothes of any colour) and then lit, shadowed and noised, so a
network has to use texture (windows, leaves, lane marks, tiles) and context (position, neighbours)
rather than look colours up. Everything is drawn with cv2 primitives and whole-array numpy, about
10 ms per 256x512 scene on one core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# Cityscapes labelIds used by the generator.
UNLABELED, EGO_VEHICLE = 0, 1
ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN = 7, 8, 11, 17, 20
VEGETATION, SKY, PERSON, CAR = 21, 23, 24, 26

SHIFT = 4  # cv2 drawing with 1/16 pixel precision, so tiny scenes keep their shapes
ONE = 1 << SHIFT

# Texture amplitudes per labelId: fine grain, medium blobs (leaves, stains), large-scale shading.
_FINE = np.zeros(256, np.float32)
_MID = np.zeros(256, np.float32)
_COARSE = np.zeros(256, np.float32)
for _id, (_f, _m, _c) in {
    SKY: (1.5, 0.0, 14.0),
    BUILDING: (5.0, 4.0, 10.0),
    ROAD: (9.0, 3.0, 9.0),
    SIDEWALK: (6.0, 5.0, 8.0),
    VEGETATION: (16.0, 30.0, 12.0),
    POLE: (3.0, 0.0, 4.0),
    TRAFFIC_SIGN: (2.0, 0.0, 3.0),
    PERSON: (4.0, 3.0, 4.0),
    CAR: (3.0, 1.0, 8.0),
    EGO_VEHICLE: (2.0, 0.0, 6.0),
    UNLABELED: (5.0, 0.0, 5.0),
}.items():
    _FINE[_id], _MID[_id], _COARSE[_id] = _f, _m, _c


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 [H, W, 3] RGB
    label_ids: np.ndarray  # uint8 [H, W] Cityscapes labelIds
    instance_ids: np.ndarray  # uint16 [H, W]: labelId, or labelId * 1000 + k for people and cars


def _pts(points: list[tuple[float, float]] | np.ndarray) -> list[np.ndarray]:
    return [np.round(np.asarray(points, dtype=np.float64) * ONE).astype(np.int32)]


class _Canvas:
    """Paints the picture (float RGB), the labels and the instances together."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.label = np.full((height, width), SKY, np.uint8)
        self.instance = np.zeros((height, width), np.uint16)
        self._next_instance = {PERSON: 0, CAR: 0}

    def new_instance(self, label_id: int) -> int:
        self._next_instance[label_id] += 1
        return label_id * 1000 + self._next_instance[label_id]

    def poly(
        self,
        points: list[tuple[float, float]] | np.ndarray,
        label_id: int | None,
        colour,
        inst: int = 0,
    ) -> None:
        pts = _pts(points)
        cv2.fillPoly(self.rgb, pts, _colour(colour), cv2.LINE_8, SHIFT)
        if label_id is not None:
            cv2.fillPoly(self.label, pts, label_id, cv2.LINE_8, SHIFT)
            cv2.fillPoly(self.instance, pts, inst or label_id, cv2.LINE_8, SHIFT)

    def rect(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        label_id: int | None,
        colour,
        inst: int = 0,
    ) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], label_id, colour, inst)

    def circle(
        self, cx: float, cy: float, r: float, label_id: int | None, colour, inst: int = 0
    ) -> None:
        centre, radius = (round(cx * ONE), round(cy * ONE)), max(round(r * ONE), ONE // 2)
        cv2.circle(self.rgb, centre, radius, _colour(colour), -1, cv2.LINE_8, SHIFT)
        if label_id is not None:
            cv2.circle(self.label, centre, radius, label_id, -1, cv2.LINE_8, SHIFT)
            cv2.circle(self.instance, centre, radius, inst or label_id, -1, cv2.LINE_8, SHIFT)


def _colour(c) -> tuple[float, float, float]:
    return tuple(float(v) for v in c)  # type: ignore[return-value]


class _Street:
    """The scene's geometry: horizon, vanishing point, road edges, facade lines."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.horizon = rng.uniform(0.38, 0.52) * height
        self.vx = rng.uniform(0.35, 0.65) * width
        self.road_left = self.vx - rng.uniform(0.45, 0.9) * width  # road edges at the bottom row
        self.road_right = self.vx + rng.uniform(0.45, 0.9) * width
        # Facades meet the ground on lines from the vanishing point to the image sides, above the
        # road edges, so there is sidewalk between.
        self.base_left = self.horizon + rng.uniform(0.12, 0.4) * (height - self.horizon)
        self.base_right = self.horizon + rng.uniform(0.12, 0.4) * (height - self.horizon)

    def depth(self, y: float | np.ndarray) -> float | np.ndarray:
        """0 at the horizon, 1 at the bottom row: image size of things standing on the ground there."""
        return np.clip((y - self.horizon) / (self.h - self.horizon), 0.0, 1.0)

    def road_edge(self, y: float, side: int) -> float:
        bottom = self.road_left if side < 0 else self.road_right
        return self.vx + (bottom - self.vx) * float(self.depth(y))

    def facade_base(self, x: float) -> float:
        if x < self.vx:
            return self.horizon + (self.base_left - self.horizon) * (self.vx - x) / self.vx
        return self.horizon + (self.base_right - self.horizon) * (x - self.vx) / (self.w - self.vx)

    def facade_x(self, y: float, side: int) -> float:
        """Where the facade line crosses row y (clamped to the image)."""
        if side < 0:
            span = self.base_left - self.horizon
            return float(
                np.clip(self.vx - self.vx * (y - self.horizon) / max(span, 1e-6), 0, self.vx)
            )
        span = self.base_right - self.horizon
        x = self.vx + (self.w - self.vx) * (y - self.horizon) / max(span, 1e-6)
        return float(np.clip(x, self.vx, self.w))


def _pick(
    rng: np.random.Generator, palette: list[tuple[float, float, float]], jitter: float
) -> np.ndarray:
    base = np.asarray(palette[rng.integers(len(palette))], np.float32)
    return np.clip(base + rng.normal(0, jitter, 3), 0, 255)


SKY_TOPS = [(60, 110, 190), (90, 140, 210), (150, 155, 165), (185, 185, 190), (120, 110, 150)]
SKY_BOTTOMS = [(170, 200, 230), (200, 215, 235), (195, 195, 200), (215, 212, 210), (230, 170, 130)]
FACADES = [
    (150, 150, 150), (120, 120, 125), (185, 175, 160), (160, 110, 90), (210, 205, 195),
    (110, 120, 140), (170, 150, 120), (95, 90, 85),
]  # fmt: skip
ROADS = [(90, 90, 95), (115, 112, 110), (70, 72, 75), (135, 130, 128)]
SIDEWALKS = [(160, 155, 150), (140, 130, 130), (175, 165, 150), (150, 120, 110), (125, 125, 130)]
GREENS = [(70, 110, 40), (50, 85, 35), (95, 120, 55), (120, 125, 60), (60, 95, 70), (140, 110, 50)]
CAR_PAINT = [
    (30, 30, 35), (220, 220, 225), (160, 160, 165), (150, 30, 30), (30, 50, 120), (40, 90, 60),
    (110, 110, 115), (200, 170, 60), (90, 60, 40),
]  # fmt: skip
CLOTHES = [(30, 30, 40), (160, 40, 40), (40, 60, 140), (200, 200, 190), (90, 90, 90), (60, 100, 60)]
SKIN = [(230, 190, 160), (200, 150, 110), (140, 95, 65), (90, 60, 45)]


def _sky(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    kind = rng.integers(len(SKY_TOPS))
    top = np.clip(np.asarray(SKY_TOPS[kind], np.float32) + rng.normal(0, 12, 3), 0, 255)
    bottom = np.clip(np.asarray(SKY_BOTTOMS[kind], np.float32) + rng.normal(0, 12, 3), 0, 255)
    t = np.clip(np.arange(canvas.h, dtype=np.float32) / max(street.horizon, 1.0), 0, 1)[:, None]
    canvas.rgb[:] = (top * (1 - t) + bottom * t)[:, None, :]


def _sidewalk(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    h, w, hz = canvas.h, canvas.w, street.horizon
    canvas.rect(-1, hz, w + 1, h + 1, SIDEWALK, _pick(rng, SIDEWALKS, 10))
    rows = np.arange(canvas.h, dtype=np.float32)[:, None]
    depth = street.depth(rows + 0.5)
    # Paving joints: rows evenly spaced in distance (1/depth), a darker line each.
    joints = (np.modf(rng.uniform(1.5, 3.5) / np.maximum(depth, 1e-3))[0] < 0.12) & (rows > hz + 1)
    canvas.rgb[np.broadcast_to(joints, (h, w))] *= 0.8


def _road(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    h, w, hz = canvas.h, canvas.w, street.horizon
    rows = np.arange(canvas.h, dtype=np.float32)[:, None]
    cols = np.arange(canvas.w, dtype=np.float32)[None, :]
    depth = street.depth(rows + 0.5)
    road = [
        (street.vx - 0.6, hz),
        (street.vx + 0.6, hz),
        (street.road_right, h),
        (street.road_left, h),
    ]
    canvas.poly(road, ROAD, _pick(rng, ROADS, 8))
    # Kerb: a light strip along both road edges (still sidewalk).
    kerb = [(street.vx, hz), (street.road_left - 0.03 * w, h), (street.road_left, h)]
    canvas.poly(kerb, SIDEWALK, (200, 200, 195))
    kerb = [(street.vx, hz), (street.road_right, h), (street.road_right + 0.03 * w, h)]
    canvas.poly(kerb, SIDEWALK, (200, 200, 195))
    # Lane marks: a dashed centre line (dashes evenly spaced in distance) and solid edge lines.
    centre = street.vx + (0.5 * (street.road_left + street.road_right) - street.vx) * depth
    half = np.maximum(0.006 * w * depth, 0.35)
    dashes = np.modf(rng.uniform(2.0, 4.0) / np.maximum(depth, 1e-3) + rng.uniform())[0] < 0.5
    lines = (np.abs(cols - centre) < half) & dashes
    for side in (-1, 1):
        edge = (
            street.vx + ((street.road_left if side < 0 else street.road_right) - street.vx) * depth
        )
        lines |= np.abs(cols - (edge - side * 0.04 * w * depth)) < half
    lines &= canvas.label == ROAD
    canvas.rgb[lines] = np.asarray((215, 215, 205), np.float32) * rng.uniform(0.8, 1.05)


def _buildings(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    hz, vx = street.horizon, street.vx
    for side in (-1, 1):
        x = 0.0 if side < 0 else float(canvas.w)
        while (x < vx - 1) if side < 0 else (x > vx + 1):
            dist = abs(vx - x)
            step = max(3.0, dist * rng.uniform(0.2, 0.5))
            x_next = min(x + step, vx) if side < 0 else max(x - step, vx)
            if rng.random() > 0.12:  # else a gap: sky and sidewalk show through
                _facade(canvas, street, rng, min(x, x_next), max(x, x_next), hz)
            x = x_next


def _facade(
    canvas: _Canvas, street: _Street, rng: np.random.Generator, x0: float, x1: float, hz: float
) -> None:
    height_factor = rng.uniform(2.0, 9.0)  # building height / camera height
    corners = []
    for x in (x0, x1):
        base = street.facade_base(x)
        corners.append((x, max(hz - height_factor * (base - hz), -1.0), base))
    (xa, ta, ba), (xb, tb, bb) = corners
    colour = _pick(rng, FACADES, 12)
    canvas.poly([(xa, ta), (xb, tb), (xb, bb), (xa, ba)], BUILDING, colour)
    # Windows on a facade grid (u across, v down the facade), so they follow the perspective.
    ix0, ix1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), canvas.w)
    iy0, iy1 = max(int(np.floor(min(ta, tb))), 0), min(int(np.ceil(max(ba, bb))), canvas.h)
    if ix1 - ix0 < 2 or iy1 - iy0 < 2:
        return
    xs = np.arange(ix0, ix1, dtype=np.float32)[None, :] + 0.5
    ys = np.arange(iy0, iy1, dtype=np.float32)[:, None] + 0.5
    u = (xs - x0) / max(x1 - x0, 1e-3)
    top = ta + (tb - ta) * u
    bottom = ba + (bb - ba) * u
    v = (ys - top) / np.maximum(bottom - top, 1e-3)
    floors = height_factor * rng.uniform(0.9, 1.3)
    columns = max(
        1, round((x1 - x0) / max(abs(street.vx - 0.5 * (x0 + x1)), 1) * rng.uniform(2, 5))
    )
    fu, fv = np.modf(u * columns)[0], np.modf(v * floors)[0]
    wu, wv = rng.uniform(0.15, 0.35), rng.uniform(0.2, 0.35)
    windows = (fu > wu) & (fu < 1 - wu) & (fv > wv) & (fv < 1 - 0.5 * wv) & (v < 0.85) & (v > 0.02)
    region = canvas.label[iy0:iy1, ix0:ix1] == BUILDING
    windows &= region
    glass = np.asarray(
        rng.choice([(40, 45, 55), (90, 110, 130), (25, 25, 25), (150, 160, 170)]), np.float32
    )
    canvas.rgb[iy0:iy1, ix0:ix1][windows] = glass + rng.normal(0, 6, 3)


def _tree(canvas: _Canvas, street: _Street, rng: np.random.Generator, x: float, y: float) -> None:
    d = float(street.depth(y))
    size = d * (canvas.h - street.horizon)
    trunk_h, trunk_w = size * rng.uniform(1.0, 1.6), max(size * 0.06, 0.8)
    canvas.rect(x - trunk_w, y - trunk_h, x + trunk_w, y, VEGETATION, (80, 60, 40))
    green = _pick(rng, GREENS, 10)
    cy, r = y - trunk_h, size * rng.uniform(0.45, 0.8)
    for _ in range(rng.integers(3, 7)):
        dx, dy = rng.normal(0, 0.45 * r), rng.normal(0, 0.35 * r)
        canvas.circle(
            x + dx, cy + dy, r * rng.uniform(0.5, 0.8), VEGETATION, green * rng.uniform(0.8, 1.1)
        )


def _hedge(canvas: _Canvas, street: _Street, rng: np.random.Generator, side: int) -> None:
    xs = np.linspace(0, street.vx, 12) if side < 0 else np.linspace(street.vx, canvas.w, 12)
    lift = rng.uniform(0.4, 1.3)
    top = [
        (
            x,
            street.facade_base(x)
            - lift * (street.facade_base(x) - street.horizon)
            + rng.normal(0, 1),
        )
        for x in xs
    ]
    bottom = [(x, street.facade_base(x) + 0.5) for x in xs[::-1]]
    canvas.poly(top + bottom, VEGETATION, _pick(rng, GREENS, 10))


def _pole(canvas: _Canvas, street: _Street, rng: np.random.Generator, x: float, y: float) -> None:
    d = float(street.depth(y))
    size = d * (canvas.h - street.horizon)
    height, half = size * rng.uniform(2.0, 3.5), max(size * 0.025, 0.6)
    grey = rng.uniform(50, 150)
    canvas.rect(x - half, y - height, x + half, y, POLE, (grey, grey, grey * rng.uniform(0.9, 1.1)))
    if rng.random() < 0.6:
        colour = rng.choice([(200, 30, 30), (30, 70, 170), (230, 200, 40), (230, 230, 230)])
        s = max(size * rng.uniform(0.12, 0.22), 1.0)
        sy = y - height + s * 1.2
        if rng.random() < 0.5:
            canvas.circle(x, sy, s, TRAFFIC_SIGN, colour)
        else:
            canvas.rect(x - s, sy - s, x + s, sy + s, TRAFFIC_SIGN, colour)


def _person(canvas: _Canvas, street: _Street, rng: np.random.Generator, x: float, y: float) -> None:
    height = (y - street.horizon) * rng.uniform(1.0, 1.25)  # people a bit taller than the camera
    if height < 2:
        return
    inst = canvas.new_instance(PERSON)
    w = height * rng.uniform(0.12, 0.16)
    legs, shirt, skin = _pick(rng, CLOTHES, 15), _pick(rng, CLOTHES, 15), _pick(rng, SKIN, 8)
    stride = w * rng.uniform(0.0, 0.6)
    canvas.poly(
        [
            (x - w * 0.9, y - height * 0.48),
            (x - 0.1 * w, y - height * 0.48),
            (x - stride * 0.3, y),
            (x - w * 0.9 - stride, y),
        ],
        PERSON,
        legs,
        inst,
    )
    canvas.poly(
        [
            (x + 0.1 * w, y - height * 0.48),
            (x + w * 0.9, y - height * 0.48),
            (x + w * 0.9 + stride, y),
            (x + stride * 0.3, y),
        ],
        PERSON,
        legs * 0.9,
        inst,
    )
    canvas.rect(x - w, y - height * 0.82, x + w, y - height * 0.45, PERSON, shirt, inst)
    canvas.rect(x - w * 1.35, y - height * 0.8, x - w, y - height * 0.5, PERSON, shirt * 0.85, inst)
    canvas.rect(x + w, y - height * 0.8, x + w * 1.35, y - height * 0.5, PERSON, shirt * 0.85, inst)
    canvas.circle(x, y - height * 0.9, height * 0.085, PERSON, skin, inst)


def _car(canvas: _Canvas, street: _Street, rng: np.random.Generator, x: float, y: float) -> None:
    height = (y - street.horizon) * rng.uniform(0.9, 1.1)
    if height < 2:
        return
    inst = canvas.new_instance(CAR)
    w = height * rng.uniform(0.85, 1.15)  # half width
    paint = _pick(rng, CAR_PAINT, 10)
    # Shadow under the car: darker road, still road.
    shadow = (slice(max(int(y - 0.12 * height), 0), min(int(y + 0.08 * height) + 1, canvas.h)),
              slice(max(int(x - 1.1 * w), 0), min(int(x + 1.1 * w) + 1, canvas.w)))  # fmt: skip
    canvas.rgb[shadow] *= 0.55
    canvas.rect(x - w * 0.92, y - height * 0.2, x - w * 0.6, y, CAR, (20, 20, 22), inst)  # wheels
    canvas.rect(x + w * 0.6, y - height * 0.2, x + w * 0.92, y, CAR, (20, 20, 22), inst)
    canvas.rect(x - w, y - height * 0.6, x + w, y - height * 0.15, CAR, paint, inst)  # body
    cabin = [
        (x - w * 0.95, y - height * 0.6),
        (x - w * 0.7, y - height),
        (x + w * 0.7, y - height),
        (x + w * 0.95, y - height * 0.6),
    ]
    canvas.poly(cabin, CAR, paint * 0.95, inst)
    glass = [
        (x - w * 0.82, y - height * 0.63),
        (x - w * 0.64, y - height * 0.93),
        (x + w * 0.64, y - height * 0.93),
        (x + w * 0.82, y - height * 0.63),
    ]
    canvas.poly(glass, CAR, np.asarray((45, 55, 65)) + rng.normal(0, 8, 3), inst)
    lights = (230, 40, 30) if rng.random() < 0.6 else (240, 235, 210)
    canvas.rect(x - w * 0.95, y - height * 0.5, x - w * 0.7, y - height * 0.4, CAR, lights, inst)
    canvas.rect(x + w * 0.7, y - height * 0.5, x + w * 0.95, y - height * 0.4, CAR, lights, inst)


def _objects(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    """Trees, poles, people and cars, painted far to near so nearer ones occlude."""
    hz, h = street.horizon, canvas.h
    todo: list[tuple[float, Callable[[], None]]] = []

    def on_sidewalk(y: float, side: int, where: float) -> float:
        road, facade = street.road_edge(y, side), street.facade_x(y, side)
        return road + (facade - road) * where

    for _ in range(rng.integers(0, 4)):
        y, side = hz + (h - hz) * rng.uniform(0.08, 0.6), int(rng.choice([-1, 1]))
        x = on_sidewalk(y, side, rng.uniform(0.5, 0.95))
        todo.append((y, lambda x=x, y=y: _tree(canvas, street, rng, x, y)))
    for _ in range(rng.integers(1, 5)):
        y, side = hz + (h - hz) * rng.uniform(0.05, 0.7), int(rng.choice([-1, 1]))
        x = on_sidewalk(y, side, rng.uniform(0.08, 0.2))
        todo.append((y, lambda x=x, y=y: _pole(canvas, street, rng, x, y)))
    for _ in range(rng.integers(0, 6)):
        y, side = hz + (h - hz) * rng.uniform(0.08, 0.95), int(rng.choice([-1, 1]))
        x = on_sidewalk(y, side, rng.uniform(0.2, 0.9))
        todo.append((y, lambda x=x, y=y: _person(canvas, street, rng, x, y)))
    for _ in range(rng.integers(0, 6)):
        y = hz + (h - hz) * rng.uniform(0.06, 0.9)
        left, right = street.road_edge(y, -1), street.road_edge(y, 1)
        x = left + (right - left) * rng.uniform(0.12, 0.88)
        todo.append((y, lambda x=x, y=y: _car(canvas, street, rng, x, y)))
    for _, draw in sorted(todo, key=lambda item: item[0]):
        draw()


def _ego_and_border(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Void the network must ignore: the ego vehicle's bonnet (id 1) and an unlabeled frame (id 0)."""
    h, w = canvas.h, canvas.w
    if rng.random() < 0.5:
        hood = max(h * rng.uniform(0.06, 0.12), 2.0)
        centre = (round(w / 2 * ONE), round((h + hood * 0.4) * ONE))
        axes = (round(w * 0.75 * ONE), round(hood * ONE))
        cv2.ellipse(
            canvas.rgb,
            centre,
            axes,
            0,
            180,
            360,
            _colour(_pick(rng, CAR_PAINT, 10) * 0.6),
            -1,
            cv2.LINE_8,
            SHIFT,
        )
        cv2.ellipse(canvas.label, centre, axes, 0, 180, 360, EGO_VEHICLE, -1, cv2.LINE_8, SHIFT)
        cv2.ellipse(canvas.instance, centre, axes, 0, 180, 360, EGO_VEHICLE, -1, cv2.LINE_8, SHIFT)
    b = 1 + int(rng.integers(0, 2))
    for target in (canvas.label, canvas.instance):
        target[:b], target[-b:], target[:, :b], target[:, -b:] = 0, 0, 0, 0


def _light_and_noise(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> np.ndarray:
    h, w, label, rgb = canvas.h, canvas.w, canvas.label, canvas.rgb
    # Texture: fine grain, medium blobs and coarse shading, with per-class strength.
    fine = rng.standard_normal((h, w), dtype=np.float32)
    mid = rng.standard_normal((max(h // 3, 1), max(w // 3, 1)), dtype=np.float32)
    coarse = rng.standard_normal((max(h // 24, 2), max(w // 24, 2)), dtype=np.float32)
    texture = cv2.LUT(label, _FINE) * fine
    texture += cv2.LUT(label, _MID) * cv2.resize(mid * 1.7, (w, h))
    texture += cv2.LUT(label, _COARSE) * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    rgb += texture[:, :, None]
    # Lighting: cast shadows (dark wedges over the ground and whatever stands there), a vertical
    # gradient, exposure and a colour cast; then sensor noise.
    light = np.ones((h, w), np.float32)
    for _ in range(rng.integers(0, 3)):
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * w)
        skew = rng.uniform(-0.5, 0.5) * w
        wedge = [(x0, street.horizon), (x1, street.horizon), (x1 + skew, h), (x0 + skew, h)]
        cv2.fillPoly(light, _pts(wedge), float(rng.uniform(0.5, 0.8)), cv2.LINE_8, SHIFT)
    rows = np.arange(h, dtype=np.float32)[:, None] / h - 0.5
    light *= 1.0 + rng.uniform(-0.25, 0.25) * rows
    rgb *= light[:, :, None]
    rgb *= (rng.uniform(0.6, 1.25) * rng.normal(1.0, 0.06, 3)).astype(np.float32)
    noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    noise *= rng.uniform(1.0, 5.0)
    rgb += noise
    if rng.random() < 0.3:
        rgb = cv2.GaussianBlur(rgb, (3, 3), 0)
    rgb += 0.5
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8)


def render_street_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """A random street scene of the given size, fully determined by rng."""
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16, got {height}x{width}")
    canvas, street = _Canvas(height, width), _Street(rng, height, width)
    _sky(canvas, street, rng)
    _sidewalk(canvas, street, rng)
    _buildings(canvas, street, rng)
    _road(canvas, street, rng)
    for side in (-1, 1):
        if rng.random() < 0.35:
            _hedge(canvas, street, rng, side)
    _objects(canvas, street, rng)
    _ego_and_border(canvas, rng)
    image = _light_and_noise(canvas, street, rng)
    return Scene(image=image, label_ids=canvas.label, instance_ids=canvas.instance)
