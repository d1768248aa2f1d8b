"""Scenes of the demo world: coloured shapes on textured grey backgrounds, sampled and rendered.

A scene is pure data (`Scene`, `Obj`); `sample_scene` draws one from a numpy Generator and
`render_scene` turns it into pixels. Objects never overlap, so each object's polygon is exactly its
visible mask. Backgrounds stay in a desaturated grey band so every object colour stays distinguishable
from them, and within a scene every colour and every shape occurs at most once, so a phrase such as
"red" or "circle" names exactly one object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "heart")
# Saturated or extreme colours; backgrounds live in BG_RANGE, far from all of them (>= 85 in RGB).
# No colour name starts with a vowel, so swapping colour words never needs "a" <-> "an".
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "pink": (245, 120, 185),
    "yellow": (240, 220, 40),
    "green": (35, 165, 55),
    "blue": (40, 75, 220),
    "purple": (140, 50, 190),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
SIZES = ("small", "large")
BACKGROUNDS = ("noise", "stripes", "gradient", "checker", "clutter")
BG_RANGE = (80.0, 175.0)  # grey levels of every background pixel before the faint tint
SIZE_RADIUS = {"small": 0.115, "large": 0.18}  # half of the bbox side, as a fraction of the image side
COLOUR_JITTER = 10  # per-channel uniform jitter of an object's colour
MAX_TILT_DEG = 12.0  # small, so that a square never turns into a diamond
SUPERSAMPLE = 4  # coverage samples per pixel side (antialiasing)
PLACEMENT_SAMPLES = 2  # coarser samples suffice to keep objects apart: the gap is a whole pixel


def _normalised(points: np.ndarray) -> np.ndarray:
    """Centre a template on its bbox and scale it so the larger bbox half-side is 1."""
    lo, hi = points.min(0), points.max(0)
    return (points - (lo + hi) / 2) / ((hi - lo).max() / 2)


def _regular(n: int, start_deg: float) -> np.ndarray:
    t = np.deg2rad(start_deg) + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1)


def _star() -> np.ndarray:
    radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return _regular(10, -90) * radius[:, None]


def _cross() -> np.ndarray:
    a = 0.34  # arm half-width
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        float,
    )


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], 1)  # image y points down


# Unit templates, y down, bbox centred on the origin with half-side 1.
TEMPLATES: dict[str, np.ndarray] = {
    name: _normalised(points)
    for name, points in {
        "circle": _regular(36, 0),
        "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float),
        "triangle": _regular(3, -90),
        "star": _star(),
        "diamond": np.array([(0, -1), (0.68, 0), (0, 1), (-0.68, 0)], float),
        "cross": _cross(),
        "hexagon": _regular(6, 0),
        "heart": _heart(),
    }.items()
}


@dataclass(frozen=True)
class Obj:
    """One filled shape; `polygon` (K, 2) is in pixel coordinates with pixel corners at integers."""

    shape: str
    colour: str
    size: str
    polygon: np.ndarray
    rgb: tuple[int, int, int] | None = None  # jittered colour actually drawn; None when loaded from COCO

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """COCO box (x, y, w, h) of the polygon."""
        (x0, y0), (x1, y1) = self.polygon.min(0), self.polygon.max(0)
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)

    @property
    def center(self) -> tuple[float, float]:
        """Centre of the bbox: the reference point of spatial relations."""
        x, y, w, h = self.bbox
        return x + w / 2, y + h / 2

    @property
    def area(self) -> float:
        """Polygon area by the shoelace formula."""
        x, y = self.polygon[:, 0], self.polygon[:, 1]
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


@dataclass(frozen=True)
class Scene:
    """A square image of side `res`: a background recipe (kind, distractors, seed) and its objects."""

    res: int
    background: str
    distractors: bool
    seed: int
    objects: tuple[Obj, ...]


# Spatial relations between two objects' bbox centres, image y pointing down.
RELATIONS = ("left", "right", "above", "below")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
RELATION_MARGIN = 0.04  # a relation holds when the centres differ by more than this fraction of the side
CAPTION_MARGIN = 0.08  # captions only state relations at least this clear


def relation_offset(a: Obj, b: Obj, relation: str, res: int) -> float:
    """How far, as a fraction of the image side, `a` lies in direction `relation` from `b`."""
    (ax, ay), (bx, by) = a.center, b.center
    offset = {"left": bx - ax, "right": ax - bx, "above": by - ay, "below": ay - by}[relation]
    return offset / res


def relation_holds(a: Obj, b: Obj, relation: str, res: int) -> bool:
    """True when object `a` is `relation` of object `b` ("left" = a is left of b)."""
    return relation_offset(a, b, relation, res) > RELATION_MARGIN


def clear_relation(a: Obj, b: Obj, res: int) -> str | None:
    """The dominant-axis relation of `a` to `b` if it is clear enough to state in a caption."""
    best = max(RELATIONS, key=lambda r: relation_offset(a, b, r, res))
    return best if relation_offset(a, b, best, res) >= CAPTION_MARGIN else None


def _polygon(shape: str, cx: float, cy: float, radius: float, tilt_deg: float) -> np.ndarray:
    t = np.deg2rad(tilt_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return TEMPLATES[shape] @ rot.T * radius + (cx, cy)


def _inside(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of the points (x, y), vectorised over points."""
    inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        if y0 != y1:
            crosses = (y0 > y) != (y1 > y)
            inside ^= crosses & (x < x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    return inside


def coverage(polygon: np.ndarray, res: int, samples: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel inside the polygon, (res, res) float32.

    Sampled on a samples x samples grid of points inside each pixel, so the total equals the
    polygon's area up to sampling noise; rasterisers that fill boundary pixels would inflate it.
    """
    (x0, y0), (x1, y1) = np.clip(np.floor(polygon.min(0)), 0, res), np.clip(np.ceil(polygon.max(0)), 0, res)
    x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
    offsets = (np.arange(samples) + 0.5) / samples
    xs = (np.arange(x0, x1)[:, None] + offsets).ravel()  # sample points, pixel-major
    ys = (np.arange(y0, y1)[:, None] + offsets).ravel()
    inside = _inside(xs[None, :], ys[:, None], polygon)  # (rows * samples, cols * samples)
    out = np.zeros((res, res), np.float32)
    out[y0:y1, x0:x1] = inside.reshape(y1 - y0, samples, x1 - x0, samples).mean((1, 3))
    return out


def _touches(mask: np.ndarray, others: np.ndarray) -> bool:
    """Whether `mask` overlaps `others` dilated by one pixel (objects keep a visible gap)."""
    grown = others.copy()
    grown[1:] |= others[:-1]
    grown[:-1] |= others[1:]
    grown[:, 1:] |= others[:, :-1]
    grown[:, :-1] |= others[:, 1:]
    return bool((mask & grown).any())


def sample_scene(rng: np.random.Generator, res: int, n_objects: int | None = None) -> Scene:
    """Sample a scene of 1-4 non-overlapping objects with distinct colours and distinct shapes.

    Args:
        rng: source of all randomness; the same generator state gives the same scene.
        res: image side in pixels.
        n_objects: number of objects; default 1-4 with weights 2:3:3:2. A large object that finds
            no free spot is made small; fewer objects are placed in the rare case that none fits.
    """
    if n_objects is None:
        n_objects = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.3, 0.3, 0.2]))
    shapes = rng.choice(SHAPES, n_objects, replace=False)
    colours = rng.choice(list(COLOURS), n_objects, replace=False)
    sizes = rng.choice(SIZES, n_objects)
    occupied = np.zeros((res, res), bool)
    boxes: list[np.ndarray] = []
    objects: list[Obj] = []
    for k in np.argsort(sizes == "small", kind="stable"):  # large ones first: they are harder to fit
        polygon, size = _place(str(shapes[k]), str(sizes[k]), rng, res, occupied, boxes)
        if polygon is None:
            continue
        occupied |= coverage(polygon, res, PLACEMENT_SAMPLES) > 0
        boxes.append(np.concatenate([polygon.min(0), polygon.max(0)]))
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[str(colours[k])]) + jitter, 0, 255))
        objects.append(Obj(str(shapes[k]), str(colours[k]), size, polygon, rgb))
    order = rng.permutation(len(objects))
    return Scene(
        res,
        str(rng.choice(BACKGROUNDS)),
        bool(rng.random() < 0.3),
        int(rng.integers(2**31)),
        tuple(objects[i] for i in order),
    )


def _place(
    shape: str, size: str, rng: np.random.Generator, res: int, occupied: np.ndarray, boxes: list[np.ndarray]
) -> tuple[np.ndarray | None, str]:
    """A polygon for the shape clear of the occupied pixels, shrunk to small if large does not fit."""
    for attempt_size in (size, "small") if size == "large" else (size,):
        radius = SIZE_RADIUS[attempt_size] * res * rng.uniform(0.92, 1.08)
        tilt = rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG)
        lo, hi = radius + 0.03 * res, res - radius - 0.03 * res
        for _ in range(40):
            # Rounded as written to COCO files, so areas and boxes agree with the files exactly.
            polygon = np.round(_polygon(shape, *rng.uniform(lo, hi, 2), radius, tilt), 2)
            box = np.concatenate([polygon.min(0) - 2, polygon.max(0) + 2])
            near = any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)
            # Only boxes that come close need the pixel test.
            if not near or not _touches(coverage(polygon, res, PLACEMENT_SAMPLES) > 0, occupied):
                return polygon, attempt_size
    return None, size


def _smooth_noise(rng: np.random.Generator, res: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a cells x cells random grid upsampled bicubically to res x res."""
    grid = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
    return np.clip(np.asarray(grid.resize((res, res), Image.Resampling.BICUBIC)), 0, 1)


def _grey_field(kind: str, rng: np.random.Generator, res: int) -> np.ndarray:
    """Background intensity pattern in [0, 1], (res, res)."""
    y, x = np.mgrid[0:res, 0:res].astype(np.float32) / res
    if kind == "noise":
        return 0.6 * _smooth_noise(rng, res, int(rng.integers(4, 10))) + 0.4 * rng.random((res, res))
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.06, 0.2)
        wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
        return 0.5 + 0.5 * np.tanh(3 * wave)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = x * np.cos(angle) + y * np.sin(angle)
        return (ramp - ramp.min()) / (ramp.max() - ramp.min())
    if kind == "checker":
        cells = int(rng.integers(4, 11))
        return (((x * cells).astype(int) + (y * cells).astype(int)) % 2).astype(np.float32)
    canvas = Image.fromarray((_smooth_noise(rng, res, 6) * 255).astype(np.uint8))  # clutter
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(25, 50))):
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * res
        w, h = rng.uniform(0.03, 0.2, 2) * res
        fill = int(rng.integers(0, 256))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=fill)
        else:
            draw.line((x0, y0, x0 + w, y0 + h), fill=fill, width=int(rng.integers(1, 4)))
    return np.asarray(canvas, np.float32) / 255


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Tinted grey background, (res, res, 3) float32 inside BG_RANGE widened by the tint."""
    lo, hi = BG_RANGE
    # A random sub-band of the grey range, so contrast varies from scene to scene.
    a, b = np.sort(rng.uniform(lo, hi, 2))
    b = max(b, a + 0.3 * (hi - lo))
    grey = a + (min(b, hi) - a) * _grey_field(scene.background, rng, scene.res)
    tint = 1 + rng.uniform(-0.05, 0.05, 3)
    return grey[..., None] * tint


def _draw_distractors(image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Grey shape outlines: shape-like clutter that no caption mentions."""
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        radius = rng.uniform(0.06, 0.14) * scene.res
        centre = rng.uniform(0, scene.res, 2)
        polygon = _polygon(str(rng.choice(SHAPES)), *centre, radius, rng.uniform(0, 360))
        grey = int(rng.uniform(*BG_RANGE))
        draw.polygon([tuple(p) for p in polygon], outline=(grey, grey, grey), width=max(1, scene.res // 64))
    return np.asarray(canvas, np.float32)


def render_scene(scene: Scene) -> np.ndarray:
    """Pixels of a scene, (res, res, 3) uint8; the same scene always renders the same pixels."""
    rng = np.random.default_rng(scene.seed)
    image = _background(scene, rng)
    if scene.distractors:
        image = _draw_distractors(image, scene, rng)
    for obj in scene.objects:
        alpha = coverage(obj.polygon, scene.res)[..., None]
        image = image * (1 - alpha) + np.array(obj.rgb or COLOURS[obj.colour], np.float32) * alpha
    image += rng.normal(0, 2.0, image.shape)  # faint sensor noise, so flat colours are not trivially exact
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def mirrored(scene: Scene) -> Scene:
    """The objects of the left-right mirror image (for flip augmentation: its captions swap left/right).

    Only the geometry is mirrored; rendering the result would not mirror the background.
    """

    def flip(obj: Obj) -> Obj:
        polygon = obj.polygon * (-1, 1) + (scene.res, 0)
        return Obj(obj.shape, obj.colour, obj.size, polygon, obj.rgb)

    return Scene(scene.res, scene.background, scene.distractors, scene.seed, tuple(map(flip, scene.objects)))
