"""The ShapesWorld oracle: reads a scene back from pixels and scores an image against a prompt.

Reading: the background is the palette background nearest most border pixels; shapes are the
connected components of pixels far from the border's median colour (after a light blur, so
pixel noise neither splits shapes nor adds specks). A component's colour is the
palette colour nearest the median of its core (its most saturated pixels); its coverage of each
pixel (0..1) is the pixel's projection onto the segment from background to that colour; its
size is the larger side of the box around pixels more than half covered, its position the
anchor nearest its coverage centroid, and its shape the world's own drawing (stretched to that
box) whose coverage has the highest soft IoU with the component's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .world import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    SUPERSAMPLE,
    Scene,
    ShapeSpec,
    draw_shape,
    parse_prompt,
)

FOREGROUND_DISTANCE = 48.0  # RGB distance from the background beyond which a pixel is a shape's
MIN_AREA = 0.004  # components smaller than this fraction of the image are noise (16 px at 64²)
SEGMENT_SIGMA = 1.0  # pixels; the image is smoothed this much before segmentation (not after)
TEMPLATE_MARGIN = 3  # pixels of context around a component's box when matching templates
TEMPLATE_GROWTHS = (0, 2, 4)  # box growths tried, in SUPERSAMPLE-ths of a pixel per side
TEMPLATE_BLURS = (0.0, 0.8, 1.6)  # Gaussian blurs (pixels) tried on the templates
CORE_FRACTION = 0.75  # core = pixels beyond this fraction of the 90th-percentile distance
# Bounding-box side (fraction of the image side) between small and large: their geometric mean.
SIZE_THRESHOLD = math.sqrt(SIZES["small"] * SIZES["large"])

SHAPE_ATTRIBUTES = ("shape", "colour", "size", "position")  # what each ShapeSpec can mention
SCORES = ("colour", "shape", "count", "position", "size", "background", "all")

Scores = dict[str, float | None]


def read_scene(image: Image.Image | np.ndarray) -> Scene:
    """The scene in an RGB image (PIL, or uint8 array [H,W,3]); shapes in reading order."""
    pixels = _as_pixels(image)
    height, width = pixels.shape[:2]
    background, reference = _read_background(pixels)
    offset = pixels - reference
    distance = np.linalg.norm(offset, axis=2)
    smoothed = ndimage.gaussian_filter(offset, (SEGMENT_SIGMA, SEGMENT_SIGMA, 0))
    labels, count = ndimage.label(np.linalg.norm(smoothed, axis=2) > FOREGROUND_DISTANCE)
    found: list[tuple[float, float, ShapeSpec]] = []
    for index in range(1, count + 1):
        own = labels == index
        if own.sum() < MIN_AREA * height * width:
            continue
        component = _read_component(pixels, reference, offset, distance, labels, own)
        if component is not None:
            found.append(component)
    found.sort(key=lambda c: (c[1], c[0]))
    return Scene(tuple(spec for _, _, spec in found), background)


def _as_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image [H,W,3], got {pixels.dtype} {pixels.shape}")
    return pixels.astype(np.float32)


def _nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> np.ndarray:
    """Index into ``palette`` of the colour nearest each pixel of ``rgb`` [..., 3]."""
    colours = np.asarray(list(palette.values()), dtype=np.float32)
    return np.argmin(((rgb[..., None, :] - colours) ** 2).sum(-1), axis=-1)


def _read_background(pixels: np.ndarray) -> tuple[str, np.ndarray]:
    """The background's palette name and its actual colour (median of the border pixels
    nearest that palette colour)."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    nearest = _nearest(BACKGROUNDS, border)
    winner = int(np.bincount(nearest, minlength=len(BACKGROUNDS)).argmax())
    return list(BACKGROUNDS)[winner], np.median(border[nearest == winner], axis=0)


def _read_component(
    pixels: np.ndarray,
    reference: np.ndarray,
    offset: np.ndarray,
    distance: np.ndarray,
    labels: np.ndarray,
    own: np.ndarray,
) -> tuple[float, float, ShapeSpec] | None:
    """(centroid x, centroid y, spec) of the component whose pixels are ``own``."""
    height, width = own.shape
    core = own & (distance >= CORE_FRACTION * np.percentile(distance[own], 90))
    rgb = np.median(pixels[core], axis=0)
    colour = list(COLOURS)[int(_nearest(COLOURS, rgb))]
    direction = rgb - reference
    coverage = np.clip(offset @ direction / max(float(direction @ direction), 1e-6), 0.0, 1.0)
    # The component and its unclaimed one-pixel fringe, where its anti-aliased edge lies.
    region = ndimage.binary_dilation(own) & ((labels == 0) | own)
    coverage = np.where(region, coverage, 0.0)
    ys, xs = np.nonzero(coverage > 0.5)
    if len(ys) == 0:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    margin = TEMPLATE_MARGIN
    crop = np.pad(coverage, margin)[y0 : y1 + 2 * margin, x0 : x1 + 2 * margin]
    shape = SHAPES[int(np.argmax(_shape_fits(crop, x1 - x0, y1 - y0)))]
    size = "large" if max((x1 - x0) / width, (y1 - y0) / height) > SIZE_THRESHOLD else "small"
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    total = coverage.sum()
    cx = float((coverage * grid_x).sum() / total + 0.5) / width
    cy = float((coverage * grid_y).sum() / total + 0.5) / height
    position = min(POSITIONS, key=lambda p: math.dist(POSITIONS[p], (cx, cy)))
    return cx, cy, ShapeSpec(shape, colour, size, position)


def _shape_fits(crop: np.ndarray, width: int, height: int) -> np.ndarray:
    """Each shape's best soft IoU with ``crop`` over its templates for a width×height box."""
    templates = _templates(width, height)  # [shape, variant, H, W]
    overlap = np.minimum(crop, templates).sum(axis=(2, 3))
    union = np.maximum(np.maximum(crop, templates).sum(axis=(2, 3)), 1e-6)
    return (overlap / union).max(axis=1)


@lru_cache(maxsize=1024)
def _templates(width: int, height: int) -> np.ndarray:
    """Coverage [shape, variant, height + 2m, width + 2m] (m = TEMPLATE_MARGIN) of every shape
    drawn as ``render`` draws it in a width×height box, in every variant: the box grown by each
    of TEMPLATE_GROWTHS, then blurred by each of TEMPLATE_BLURS, since blur both softens a
    shape and shrinks the box of its half-covered pixels."""
    s, m = SUPERSAMPLE, TEMPLATE_MARGIN
    variants = []
    for shape in SHAPES:
        for grow in TEMPLATE_GROWTHS:
            canvas = Image.new("L", ((width + 2 * m) * s, (height + 2 * m) * s), 0)
            box = (m * s - grow, m * s - grow, (m + width) * s + grow, (m + height) * s + grow)
            draw_shape(ImageDraw.Draw(canvas), shape, box, 255)
            sharp = np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0
            variants += [
                ndimage.gaussian_filter(sharp, blur, mode="constant") if blur > 0 else sharp
                for blur in TEMPLATE_BLURS
            ]
    templates = np.stack(variants).reshape(len(SHAPES), -1, height + 2 * m, width + 2 * m)
    templates.flags.writeable = False
    return templates


# ------------------------------------------------------------------------------------ scoring


def compare(expected: Scene, observed: Scene) -> Scores:
    """Per-attribute accuracy of ``observed`` against what ``expected`` mentions (None where it
    mentions nothing). Expected shapes are matched to observed ones by the assignment with the
    most agreeing attributes; an expected shape left without a partner agrees on nothing."""
    partner = _partners(expected, observed)
    scores: Scores = {}
    for attribute in SHAPE_ATTRIBUTES:
        hits = [
            getattr(want, attribute) == getattr(observed.shapes[partner[i]], attribute)
            if i in partner else False
            for i, want in enumerate(expected.shapes)
            if getattr(want, attribute) is not None
        ]
        scores[attribute] = float(np.mean(hits)) if hits else None
    scores["count"] = float(len(expected.shapes) == len(observed.shapes))
    scores["background"] = (
        None if expected.background is None else float(expected.background == observed.background)
    )
    scores["all"] = float(all(v == 1.0 for v in scores.values() if v is not None))
    return {name: scores[name] for name in SCORES}


def _partners(expected: Scene, observed: Scene) -> dict[int, int]:
    """Expected shape index → its observed partner's, by the assignment with the most agreeing
    attributes (``scipy.optimize.linear_sum_assignment``)."""
    agree = np.zeros((len(expected.shapes), len(observed.shapes)))
    for i, want in enumerate(expected.shapes):
        for j, got in enumerate(observed.shapes):
            agree[i, j] = sum(_agreement(want, got).values())
    return dict(zip(*linear_sum_assignment(agree, maximize=True)))


# how many values each attribute a prompt can leave free takes
ATTRIBUTE_VALUES = {"colour": len(COLOURS), "size": len(SIZES), "position": len(POSITIONS),
                    "background": len(BACKGROUNDS)}


def free_attributes(image: Image.Image | np.ndarray, prompt: str) -> dict[str, str | None]:
    """What the image shows of every attribute the prompt leaves free: each named shape's
    colour, size and position when the prompt does not say them (``"1.colour"``: shape 1's),
    and the background when it names none; None for a named shape the image lacks. {} when the
    prompt names no shape."""
    expected, _ = parse_prompt(prompt)
    if expected is None:
        return {}
    return _free(expected, read_scene(image))


def _free(expected: Scene, observed: Scene) -> dict[str, str | None]:
    partner = _partners(expected, observed)
    values: dict[str, str | None] = {}
    for i, want in enumerate(expected.shapes):
        got = observed.shapes[partner[i]] if i in partner else None
        for attribute in ("colour", "size", "position"):
            if getattr(want, attribute) is None:
                values[f"{i}.{attribute}"] = getattr(got, attribute) if got else None
    if expected.background is None:
        values["background"] = observed.background
    return values


def attribute_diversity(readings: Sequence[dict[str, str | None]]) -> float:
    """How varied one prompt's images are in what the prompt leaves free, from
    ``free_attributes`` of each of its S images (seeds): per free attribute, the entropy of its
    values across the images over the most it can be (log min(S, number of values)), averaged
    over the attributes; 0 when every image shows the same, 1 when they differ as much as S
    images can. NaN when the prompt leaves nothing free or S < 2."""
    if len(readings) < 2 or not readings[0]:
        return math.nan
    entropies = []
    for key in readings[0]:
        values = [r.get(key) for r in readings]
        _, counts = np.unique(np.asarray([str(v) for v in values]), return_counts=True)
        p = counts / counts.sum()
        kind = key.rsplit(".", 1)[-1]
        most = math.log(min(len(values), ATTRIBUTE_VALUES[kind]))
        entropies.append(float(-(p * np.log(p)).sum() / most))
    return float(np.mean(entropies))


def _agreement(want: ShapeSpec, got: ShapeSpec) -> dict[str, bool]:
    return {
        a: getattr(want, a) == getattr(got, a)
        for a in SHAPE_ATTRIBUTES
        if getattr(want, a) is not None
    }


def alignment(image: Image.Image | np.ndarray, prompt: str) -> Scores:
    """Per-attribute accuracy (colour, shape, count, position, size, background, all) of the
    image against what the prompt mentions; all None when the prompt names no shape."""
    expected, _ = parse_prompt(prompt)
    if expected is None:
        return dict.fromkeys(SCORES, None)
    return compare(expected, read_scene(image))


def image_alignments(images: torch.Tensor, prompts: Sequence[str]) -> list[Scores]:
    """``alignment`` of each float image [N,3,H,W] in [0,1] against its prompt."""
    return [alignment(array, prompt) for array, prompt in zip(_uint8_pixels(images, prompts),
                                                              prompts)]


def _uint8_pixels(images: torch.Tensor, prompts: Sequence[str]) -> np.ndarray:
    """Float images [N,3,H,W] in [0,1], one per prompt, as uint8 [N,H,W,3]; ValueError for
    another shape."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(prompts):
        raise ValueError(f"expected images [N,3,H,W] for {len(prompts)} prompts, "
                         f"got {tuple(images.shape)}")
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def image_readings(images: torch.Tensor, prompts: Sequence[str]
                   ) -> list[tuple[Scores, dict[str, str | None]]]:
    """Each float image [N,3,H,W] in [0,1], read once: its ``alignment`` against its prompt and
    its ``free_attributes``."""
    readings = []
    for array, prompt in zip(_uint8_pixels(images, prompts), prompts):
        expected, _ = parse_prompt(prompt)
        if expected is None:
            readings.append((dict.fromkeys(SCORES, None), {}))
            continue
        observed = read_scene(array)
        readings.append((compare(expected, observed), _free(expected, observed)))
    return readings


def mean_alignment(scores: Sequence[Scores], prompts: Sequence[str]) -> dict[str, float]:
    """Mean of each score (NaN where no prompt mentions the attribute), plus ``unscored``, the
    number of prompts that name no shape, and ``out_of_vocabulary``, the number with words the
    oracle cannot score."""
    means = {}
    for name in SCORES:
        values = [s[name] for s in scores if s[name] is not None]
        means[name] = float(np.mean(values)) if values else math.nan
    unscored = sum(s["all"] is None for s in scores)
    out_of_vocabulary = sum(bool(parse_prompt(p)[1]) for p in prompts)
    return {**means, "unscored": float(unscored), "out_of_vocabulary": float(out_of_vocabulary)}


def batch_alignment(images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """``mean_alignment`` over float images [N,3,H,W] in [0,1] and their prompts."""
    return mean_alignment(image_alignments(images, prompts), prompts)
