"""ShapesWorld: a procedural text-to-image world of one or two flat shapes on a plain background.

Scenes are sampled from a small vocabulary, rendered with PIL and described by templated
captions. ``parse_prompt`` reads a prompt back into the attributes it mentions: the "expected"
side that the oracle (``textcraftor.shapes.oracle``) scores an image against.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import IterableDataset, get_worker_info

RGB = tuple[int, int, int]

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")

# Shape colours: at least 108 apart in RGB from each other and 118 from every background.
COLOURS: dict[str, RGB] = {
    "red": (215, 30, 30),
    "orange": (245, 130, 0),
    "yellow": (245, 230, 40),
    "green": (30, 170, 50),
    "cyan": (40, 210, 220),
    "blue": (30, 70, 230),
    "purple": (150, 30, 190),
    "pink": (250, 130, 210),
}

# Background colours; no name is shared with COLOURS ("a white circle" is outside the world).
BACKGROUNDS: dict[str, RGB] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}

# Side of a shape's (square) bounding box, as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.3, "large": 0.42}

# Centre (x, y) of each position as fractions of the image side. A large shape on the left
# still fits in the image; two shapes share a scene only where their boxes stay apart
# (``MIN_GAP``), which at these sizes means left with right or top with bottom.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
MIN_GAP = 0.04  # least gap between two shapes' boxes, as a fraction of the image side

POSITION_PHRASES: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}

# Words a prompt may contain that carry no attribute (not reported as out of vocabulary).
STOP_WORDS = frozenset(
    {"a", "an", "the", "on", "at", "in", "and", "of", "with", "two", "one", "shape", "shapes",
     "background", "side"}
)

# Spellings parse_prompt accepts for vocabulary words.
SYNONYMS: dict[str, str] = {
    "grey": "gray",
    "centre": "center",
    "middle": "center",
    "big": "large",
    "little": "small",
}

# Plural of each shape word ("two red circles").
PLURALS: dict[str, str] = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}

SUPERSAMPLE = 4  # shapes are drawn at this multiple of the image side, then box-averaged down

STAR_INNER_RADIUS = 0.45  # inner/outer radius of the five-pointed star (0.38 is the classic star)
CROSS_ARM_WIDTH = 0.38  # width of the plus sign's arms, as a fraction of its bounding box


@dataclass(frozen=True)
class ShapeSpec:
    shape: str  # one of SHAPES
    colour: str | None  # one of COLOURS; None = not mentioned (parsed prompts only)
    size: str | None  # one of SIZES; None = not mentioned
    position: str | None  # one of POSITIONS; None = not mentioned

    def __post_init__(self) -> None:
        _check_word(self.shape, SHAPES, "shape")
        _check_word(self.colour, COLOURS, "colour", optional=True)
        _check_word(self.size, SIZES, "size", optional=True)
        _check_word(self.position, POSITIONS, "position", optional=True)


@dataclass(frozen=True)
class Scene:
    """Sampled scenes hold 1..max_shapes shapes in distinct positions; a scene read from pixels
    may hold any number (0 for a blank image)."""

    shapes: tuple[ShapeSpec, ...]  # the shapes, in caption order
    background: str | None  # one of BACKGROUNDS; None = not mentioned

    def __post_init__(self) -> None:
        _check_word(self.background, BACKGROUNDS, "background", optional=True)


def _check_word(word: str | None, allowed: Collection[str], kind: str,
                optional: bool = False) -> None:
    if word is None and optional:
        return
    if word not in allowed:
        raise ValueError(f"unknown {kind} {word!r}; expected one of {sorted(allowed)}")


def sample_scene(rng: random.Random, max_shapes: int = 2) -> Scene:
    """1..max_shapes shapes, each in its own position and apart from the others (drawn again
    until they are), with every attribute set."""
    if not 1 <= max_shapes <= 2:
        raise ValueError(f"max_shapes must be in 1..2 (three shapes do not fit apart), "
                         f"got {max_shapes}")
    count = rng.randint(1, max_shapes)
    while True:
        shapes = tuple(
            ShapeSpec(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)),
                      position)
            for position in rng.sample(list(POSITIONS), count)
        )
        if all(apart(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1:]):
            return Scene(shapes, rng.choice(list(BACKGROUNDS)))


def apart(a: ShapeSpec, b: ShapeSpec) -> bool:
    """Whether the boxes of two placed shapes are at least MIN_GAP apart along some axis."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = shape_box(a, 1.0), shape_box(b, 1.0)
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1) >= MIN_GAP


# ---------------------------------------------------------------------------------- rendering


def _star_outline() -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        angle = -math.pi / 2 + k * math.pi / 5
        radius = 1.0 if k % 2 == 0 else STAR_INNER_RADIUS
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


def _cross_outline() -> list[tuple[float, float]]:
    a, b = 0.5 - CROSS_ARM_WIDTH / 2, 0.5 + CROSS_ARM_WIDTH / 2
    return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b),
            (0, a), (a, a)]


def _fit_unit_box(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, y0, width, height = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return tuple(((x - x0) / width, (y - y0) / height) for x, y in points)


# Polygon of each non-round shape in the unit box [0,1]², y down, stretched to touch all sides.
OUTLINES: dict[str, tuple[tuple[float, float], ...]] = {
    "square": ((0, 0), (1, 0), (1, 1), (0, 1)),
    "triangle": ((0.5, 0), (1, 1), (0, 1)),
    "diamond": ((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
    "star": _fit_unit_box(_star_outline()),
    "cross": _fit_unit_box(_cross_outline()),
}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str,
               box: tuple[float, float, float, float], fill: RGB | int) -> None:
    """Fills ``shape`` stretched to the pixel box (x0, y0, x1, y1), x1 and y1 exclusive."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0 - 1, y1 - y0 - 1  # PIL's outlines include their last pixel
    if shape == "circle":
        draw.ellipse((x0, y0, x0 + width, y0 + height), fill=fill)
        return
    draw.polygon([(x0 + u * width, y0 + v * height) for u, v in OUTLINES[shape]], fill=fill)


def shape_box(spec: ShapeSpec, side: float) -> tuple[float, float, float, float]:
    """The pixel box (x0, y0, x1, y1) of a fully specified shape in a ``side``-pixel image."""
    if spec.size is None or spec.position is None:
        raise ValueError(f"cannot place a shape without size and position: {spec}")
    cx, cy = POSITIONS[spec.position]
    half = SIZES[spec.size] * side / 2
    return (cx * side - half, cy * side - half, cx * side + half, cy * side + half)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a ``size``×``size`` RGB image; a pure function of (scene, size)."""
    if scene.background is None or any(s.colour is None for s in scene.shapes):
        raise ValueError(f"cannot render a scene with unspecified attributes: {scene}")
    side = size * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    for spec in scene.shapes:
        draw_shape(draw, spec.shape, shape_box(spec, side), COLOURS[spec.colour])
    return canvas.reduce(SUPERSAMPLE)  # box filter: each pixel is its exact area coverage


# ----------------------------------------------------------------------------------- captions


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _noun_phrase(spec: ShapeSpec, with_size: bool, with_position: bool) -> str:
    words = [spec.size] if with_size and spec.size else []
    words += [spec.colour, spec.shape] if spec.colour else [spec.shape]
    phrase = _with_article(" ".join(words))
    if with_position and spec.position:
        phrase += " " + POSITION_PHRASES[spec.position]
    return phrase


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe(scene: Scene) -> str:
    """A caption that mentions every attribute of the scene."""
    body = _join([_noun_phrase(s, with_size=True, with_position=True) for s in scene.shapes])
    return body + (f" on a {scene.background} background" if scene.background else "")


def caption_words() -> frozenset[str]:
    """Every word a caption of ``caption`` or ``describe`` can contain (punctuation aside)."""
    positions = {word for phrase in POSITION_PHRASES.values() for word in phrase.split()}
    return frozenset(set(SHAPES) | set(PLURALS) | set(COLOURS) | set(BACKGROUNDS) | set(SIZES)
                     | positions | STOP_WORDS)


def caption(scene: Scene, rng: random.Random) -> str:
    """A templated caption: always each shape's colour and shape word; its size and position
    each with probability 1/2, the background with probability 2/5."""
    with_sizes = [rng.random() < 0.5 for _ in scene.shapes]
    with_positions = [rng.random() < 0.5 for _ in scene.shapes]
    phrases = [_noun_phrase(s, z, p) for s, z, p in zip(scene.shapes, with_sizes, with_positions)]
    first = scene.shapes[0]
    twins = len(scene.shapes) == 2 and not any(with_positions) and (
        (first.shape, first.colour, first.size if any(with_sizes) else None)
        == (scene.shapes[1].shape, scene.shapes[1].colour,
            scene.shapes[1].size if any(with_sizes) else None)
    )
    if twins:  # "two red circles" rather than "a red circle and a red circle"
        size = f"{first.size} " if any(with_sizes) else ""
        body = f"two {size}{first.colour} {_plural(first.shape)}"
    elif len(phrases) == 2:
        body = rng.choice(("{} and {}", "{} with {}", "two shapes: {} and {}")).format(*phrases)
    else:
        body = _join(phrases)
    if rng.random() >= 0.4:
        return body
    if rng.random() < 0.5 and " with " not in body:
        return f"a {scene.background} background with {body}"
    return f"{body} on a {scene.background} background"


def _plural(shape: str) -> str:
    return next(plural for plural, singular in PLURALS.items() if singular == shape)


# ------------------------------------------------------------------------------------ parsing

_TOKEN = re.compile(r"[^\W_]+")


def parse_prompt(text: str) -> tuple[Scene | None, list[str]]:
    """The scene a prompt describes, with unmentioned attributes None, and the words the oracle
    cannot score: words outside the vocabulary (stop words aside), colour or size words not
    followed by a shape word, and a shape colour used as a background (or vice versa).

    Colour and size words attach to the next shape word, position words to the last shape (or
    the first if none came yet), "<background colour> background" to the scene; a plural shape
    word ("two red circles") makes two shapes. The scene is None when the prompt names no shape.
    """
    tokens = [SYNONYMS.get(t, t) for t in _TOKEN.findall(text.lower())]
    shapes: list[ShapeSpec] = []
    unscored: list[str] = []
    pending: dict[str, str] = {}  # "colour" and "size" words waiting for their shape word
    position = background = None  # a position named before any shape; the background
    for i, token in enumerate(tokens):
        followed_by_background = i + 1 < len(tokens) and tokens[i + 1] == "background"
        if followed_by_background and token in BACKGROUNDS:
            background = token
        elif (token in COLOURS and not followed_by_background) or token in SIZES:
            kind = "colour" if token in COLOURS else "size"
            unscored += [pending[kind]] if kind in pending else []
            pending[kind] = token
        elif token in SHAPES or token in PLURALS:
            spec = ShapeSpec(PLURALS.get(token, token), pending.get("colour"),
                             pending.get("size"), None)
            shapes += [spec] * (2 if token in PLURALS else 1)
            pending = {}
        elif token in POSITIONS:
            if shapes:
                last = shapes[-1]
                shapes[-1] = ShapeSpec(last.shape, last.colour, last.size, token)
            else:
                position = token
        elif token not in STOP_WORDS:
            unscored += [*pending.values(), token]
            pending = {}
    unscored += pending.values()
    if not shapes:
        return None, unscored + ([position] if position else [])
    if position and shapes[0].position is None:
        first = shapes[0]
        shapes[0] = ShapeSpec(first.shape, first.colour, first.size, position)
    return Scene(tuple(shapes), background), unscored


# ------------------------------------------------------------------------------------ dataset


class ShapesDataset(IterableDataset):
    """An unlimited, deterministic stream of (image, caption, scene): item ``index`` is a pure
    function of (seed, index). Iterating yields (uint8 tensor [3,S,S], caption) from index 0,
    split between DataLoader workers by index modulo the number of workers."""

    def __init__(self, seed: int = 0, image_size: int = 64, max_shapes: int = 2) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = seed  # which world: datasets with different seeds share no items
        self.image_size = image_size  # side of every image in pixels
        self.max_shapes = max_shapes  # each scene holds 1..max_shapes shapes

    def scene_and_caption(self, index: int) -> tuple[Scene, str]:
        if index < 0:
            raise IndexError(f"index must be >= 0, got {index}")
        rng = random.Random((self.seed << 64) + index)  # int seeds are hash-free and exact
        scene = sample_scene(rng, self.max_shapes)
        return scene, caption(scene, rng)

    def item(self, index: int) -> tuple[Image.Image, str, Scene]:
        scene, text = self.scene_and_caption(index)
        return render(scene, self.image_size), text, scene

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, list[str], list[Scene]]:
        """Items start..start+count-1: uint8 images [count,3,S,S], captions, scenes."""
        items = [self.item(i) for i in range(start, start + count)]
        images = torch.stack([_to_tensor(image) for image, _, _ in items])
        return images, [text for _, text, _ in items], [scene for _, _, scene in items]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        worker = get_worker_info()
        index, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        while True:
            image, text, _ = self.item(index)
            yield _to_tensor(image), text
            index += step


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
