"""Emulator layer: deterministic image recipes (pure data) and the Pillow renderer that paints them.

A recipe (`Spec`) is a frozen, hashable tree of `Scene`s, so submitting a job only builds a few small
objects; pixels are painted when a URL is fetched. Scenes are drawn from normalised coordinates, so
the same recipe renders crisply at any size, and an upscale is simply one panel of the grid drawn
large. Pillow is imported inside the functions that need it (it is an optional extra).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import random
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

__all__ = [
    "Box",
    "Scene",
    "Spec",
    "digest",
    "dims",
    "follow_up",
    "generate",
    "mask_box",
    "pan",
    "placeholder_mp4",
    "region",
    "render_png",
    "reroll",
    "single",
    "vary",
    "zoom_out",
]

#: A normalised box ``(x0, y0, x1, y1)`` with every value in ``0..1``.
Box = tuple[float, float, float, float]
Direction = Literal["left", "right", "up", "down"]

_MIN_ASPECT, _MAX_ASPECT = 0.25, 4.0
_PAN_GROWTH = 1.5


def digest(*parts: object) -> int:
    """Return a stable 64-bit integer hash of *parts* (Python's `hash()` is salted per process)."""
    data = "\x1f".join(repr(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Scene:
    """One picture: a tinted gradient with shapes, optionally framing a parent scene or a repainted patch."""

    seed: int
    hue: float
    aspect: float = 1.0
    #: Perturbations applied on top of the layout from `seed`: ``(seed, strength)`` pairs, oldest first.
    jitters: tuple[tuple[int, float], ...] = ()
    #: The parent scene and where it sits (zoom out and pan keep the old picture inside the new one).
    inner: Scene | None = None
    inner_box: Box = (0.0, 0.0, 1.0, 1.0)
    #: Regions repainted by `variation_region`, each with the scene painted there.
    patches: tuple[tuple[Box, Scene], ...] = ()


@dataclass(frozen=True)
class Spec:
    """A recipe for one image: four panels make a 2x2 grid, one panel a single image."""

    panels: tuple[Scene, ...]
    #: 0 for a finished image; up to 1 for a blurry intermediate progress image.
    blur: float = 0.0
    aspect: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "aspect", self.panels[0].aspect)

    @property
    def is_grid(self) -> bool:
        """Whether this is a 2x2 grid (as opposed to a single image)."""
        return len(self.panels) == 4

    def quadrant(self, index: int) -> Spec:
        """Return the recipe of quadrant *index* (0 = top left, 3 = bottom right)."""
        return Spec((self.panels[index],))

    def blurred(self, amount: float) -> Spec:
        """Return the same picture, blurred by *amount* (0..1), as shown while a job is in progress."""
        return replace(self, blur=amount)


def dims(aspect: float, long_side: int) -> tuple[int, int]:
    """Return even ``(width, height)`` with the given aspect ratio and longest side (even so a grid splits evenly)."""
    if aspect >= 1:
        width, height = float(long_side), long_side / aspect
    else:
        width, height = long_side * aspect, float(long_side)
    return _even(width), _even(height)


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def clamp_aspect(aspect: float) -> float:
    """Keep aspect ratios within Midjourney's supported range."""
    return min(max(aspect, _MIN_ASPECT), _MAX_ASPECT)


# --- recipes -------------------------------------------------------------------------------------


def generate(prompt: str, aspect: float = 1.0, salt: object = 0) -> Spec:
    """Return the 2x2 grid for a prompt: four distinct tints of one palette derived from the prompt."""
    base = digest("prompt", prompt)
    hue = (base % 3600) / 3600
    aspect = clamp_aspect(aspect)
    return Spec(tuple(Scene(digest(base, salt, i), (hue + 0.09 * i) % 1.0, aspect) for i in range(4)))


def single(spec: Spec, index: int = 0) -> Spec:
    """Return panel *index* of *spec* as a single image (an upscale)."""
    return spec.quadrant(index)


def reroll(spec: Spec, salt: object) -> Spec:
    """Return a fresh grid with the same palette and new layouts."""
    return Spec(tuple(replace(p, seed=digest(p.seed, "reroll", salt), jitters=()) for p in spec.panels))


def vary(scene: Scene, salt: object, strength: float) -> Spec:
    """Return a grid of four perturbations of *scene* (same palette, shapes moved by up to *strength*)."""
    return Spec(
        tuple(
            replace(
                scene,
                hue=(scene.hue + (i - 1.5) * strength * 0.1) % 1.0,
                jitters=(*scene.jitters, (digest(scene, salt, i), strength)),
            )
            for i in range(4)
        )
    )


def region(scene: Scene, box: Box, salt: object) -> Spec:
    """Return a grid of four versions of *scene* with *box* repainted (`variation_region`)."""
    panels = []
    for i in range(4):
        patch_seed = digest(scene, salt, "region", i)
        patch = Scene(patch_seed, (scene.hue + 0.5 + 0.05 * i) % 1.0, 1.0)
        panels.append(replace(scene, patches=(*scene.patches, (box, patch))))
    return Spec(tuple(panels))


def zoom_out(scene: Scene, factor: float, salt: object) -> Spec:
    """Return a grid where *scene* is shrunk by *factor* inside four different new surroundings."""
    margin = (1 - 1 / factor) / 2
    box = (margin, margin, 1 - margin, 1 - margin)
    return Spec(
        tuple(
            Scene(digest(scene, salt, "zoom", i), scene.hue, scene.aspect, inner=scene, inner_box=box)
            for i in range(4)
        )
    )


def pan(scene: Scene, direction: Direction, salt: object) -> Spec:
    """Return a grid where the canvas of *scene* is extended towards *direction*."""
    if direction in ("left", "right"):
        aspect = clamp_aspect(scene.aspect * _PAN_GROWTH)
        share = scene.aspect / aspect  # the old picture's share of the new width
        box: Box = (1 - share, 0.0, 1.0, 1.0) if direction == "left" else (0.0, 0.0, share, 1.0)
    else:
        aspect = clamp_aspect(scene.aspect / _PAN_GROWTH)
        share = aspect / scene.aspect  # the old picture's share of the new height
        box = (0.0, 1 - share, 1.0, 1.0) if direction == "up" else (0.0, 0.0, 1.0, share)
    return Spec(
        tuple(
            Scene(digest(scene, salt, "pan", direction, i), scene.hue, aspect, inner=scene, inner_box=box)
            for i in range(4)
        )
    )


_STRENGTH = {"variation_subtle": 0.04, "variation_strong": 0.18}
_ZOOM = {"zoom_out_2x": 2.0, "zoom_out_1_5x": 1.5}


def follow_up(spec: Spec, action: str, salt: object, box: Box | None = None) -> Spec:
    """Return the recipe that Midjourney action *action* makes from *spec* (*box*: a region's mask).

    Raises:
        ValueError: *action* is not a known Midjourney action.
    """
    scene = spec.panels[0]
    kind, index = action[:-1], action[-1:]
    if kind in ("upscale", "variation") and index in ("1", "2", "3", "4"):
        chosen = int(index) - 1
        return single(spec, chosen) if kind == "upscale" else vary(spec.panels[chosen], salt, 0.1)
    if action == "reroll":
        return reroll(spec, salt)
    if action in _STRENGTH:
        return vary(scene, salt, _STRENGTH[action])
    if action == "variation_region":
        return region(scene, box or (0.0, 0.0, 1.0, 1.0), salt)
    if action in _ZOOM:
        return zoom_out(scene, _ZOOM[action], salt)
    if action in ("pan_left", "pan_right", "pan_up", "pan_down"):
        return pan(scene, cast(Direction, action[4:]), salt)
    if action in ("upscale_2x", "upscale_4x"):
        return spec  # the same picture, only bigger
    raise ValueError(f"unknown action {action!r}")


def cover(source: str, aspect: float = 0.8) -> Spec:
    """Return a single image standing in for an uploaded picture (a video's first frame, say)."""
    seed = digest("cover", source)
    return Spec((Scene(seed, (seed % 1000) / 1000, clamp_aspect(aspect)),))


# --- inputs -------------------------------------------------------------------------------------


def mask_box(data: bytes) -> Box | None:
    """Return the normalised bounding box of the white area of a mask image, or None when it has none.

    Raises:
        ValueError: *data* is not an image.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is an optional extra
        return _sniff_image(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            gray = img.convert("L").point(lambda v: 255 if v >= 128 else 0)
            width, height = gray.size
            bbox = gray.getbbox()
    except Exception as exc:  # Pillow raises many types for garbage input
        raise ValueError("not an image") from exc
    if bbox is None:
        return None
    x0, y0, x1, y1 = bbox
    return (x0 / width, y0 / height, x1 / width, y1 / height)


def _sniff_image(data: bytes) -> Box:
    signatures = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
    if data.startswith(signatures) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return (0.0, 0.0, 1.0, 1.0)
    raise ValueError("not an image")


def placeholder_mp4(video_id: str, index: int) -> bytes:
    """Return a few bytes that start like an MP4 file (an ``ftyp`` box), unique per video and index."""
    ftyp = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    note = f"mjasync emulator video {video_id} #{index}".encode()
    return ftyp + (8 + len(note)).to_bytes(4, "big") + b"free" + note


# --- rendering ----------------------------------------------------------------------------------


def render_png(spec: Spec, width: int, height: int) -> bytes:
    """Paint *spec* at exactly ``width`` x ``height`` pixels and return PNG bytes."""
    from PIL import Image, ImageFilter

    img = Image.new("RGB", (width, height))
    if spec.is_grid:
        half_w, half_h = width // 2, height // 2
        origins = ((0, 0), (half_w, 0), (0, half_h), (half_w, half_h))
        sizes = (
            (half_w, half_h),
            (width - half_w, half_h),
            (half_w, height - half_h),
            (width - half_w, height - half_h),
        )
        for scene, origin, size in zip(spec.panels, origins, sizes, strict=True):
            img.paste(_paint(scene, *size), origin)
    else:
        img.paste(_paint(spec.panels[0], width, height), (0, 0))
    if spec.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, spec.blur * min(width, height) / 25)))
    out = io.BytesIO()
    # compress_level=1: these are throwaway test images, so speed matters more than size.
    img.save(out, "PNG", compress_level=1)
    return out.getvalue()


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _shapes(scene: Scene) -> list[tuple[int, float, float, float, float]]:
    rng = random.Random(scene.seed)
    shapes = []
    for _ in range(rng.randint(4, 7)):
        kind = rng.randrange(3)
        cx, cy = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85)
        radius = rng.uniform(0.06, 0.22)
        hue = scene.hue + rng.choice((0.5, 0.33, 0.66, 0.12))
        shapes.append([kind, cx, cy, radius, hue])
    for jitter_seed, strength in scene.jitters:
        jr = random.Random(jitter_seed)
        for shape in shapes:
            shape[1] += jr.uniform(-strength, strength)
            shape[2] += jr.uniform(-strength, strength)
            shape[3] *= 1 + jr.uniform(-strength, strength)
            shape[4] += jr.uniform(-strength, strength) * 0.3
    return [(int(k), cx, cy, r, h) for k, cx, cy, r, h in shapes]


def _paint(scene: Scene, width: int, height: int) -> Any:
    """Paint one scene on its own canvas, so shapes never spill into a neighbouring panel."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (max(1, width), max(1, height)))
    draw = ImageDraw.Draw(img)
    top, bottom = _rgb(scene.hue, 0.45, 0.95), _rgb(scene.hue + 0.08, 0.75, 0.40)
    for row in range(height):
        t = row / max(1, height - 1)
        color = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, row), (width, row)], fill=color)
    unit = min(width, height)
    for kind, cx, cy, radius, hue in _shapes(scene):
        x, y, r = cx * width, cy * height, radius * unit
        fill = _rgb(hue, 0.8, 0.85)
        if kind == 0:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif kind == 1:
            draw.rectangle([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r * 0.87, y + r * 0.5), (x + r * 0.87, y + r * 0.5)], fill=fill)
    for box, child in ((scene.inner_box, scene.inner), *scene.patches):
        if child is None:
            continue
        x0, y0 = round(box[0] * width), round(box[1] * height)
        x1, y1 = round(box[2] * width), round(box[3] * height)
        if x1 - x0 >= 2 and y1 - y0 >= 2:  # too small to see: skip, which also ends deep zoom chains
            img.paste(_paint(child, x1 - x0, y1 - y0), (x0, y0))
    return img
