"""The tasks' exact scores, read by the ShapesWorld oracle (``shapes.oracle.read_scene`` and
``compare``) from the edited images: one value per image, 1/0 accuracies unless said.

Recolour (the oracle against the prompt's scene, every attribute named): ``colour`` (the
shape has the asked colour), ``shape``, ``size``, ``position`` (kept), ``count`` (one shape),
``background`` (kept), ``all``.

Inpaint: inside the mask, the image with every pixel outside the mask set to the background
colour is read against the added shape alone: ``added_shape``, ``added_colour``,
``added_size``, ``added_position``, ``added_count`` (one shape in the mask) and
``added_all``; outside it, the image with the mask filled with the background is read against
the kept shape: ``kept_all`` (every attribute, one shape, the background); and
``outside_change``, the mean absolute change of the pixels outside the mask, in [0, 1] pixel
units over the 3 channels (lower is better).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from textcraftor.shapes.oracle import compare, read_scene
from textcraftor.shapes.world import BACKGROUNDS, Scene

from .items import InpaintItem, RecolourItem

RECOLOUR_SCORES = ("colour", "shape", "size", "position", "count", "background", "all")
INPAINT_SCORES = ("added_shape", "added_colour", "added_size", "added_position", "added_count",
                  "added_all", "kept_all", "outside_change")
LOWER_IS_BETTER = frozenset({"outside_change"})  # every other score is higher-is-better


def uint8_pixels(images: torch.Tensor) -> np.ndarray:
    """Float [N, 3, H, W] in [0, 1] → uint8 [N, H, W, 3], as the oracle reads an image."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: shape {tuple(images.shape)}; allowed: [N, 3, H, W]")
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def recolour_scores(images: torch.Tensor, items: Sequence[RecolourItem]
                    ) -> dict[str, list[float]]:
    """Each RECOLOUR_SCORES name → one value per image; ``images`` [N, 3, H, W] in [0, 1],
    image n edited for ``items[n]``."""
    _check_count(images, items)
    values: dict[str, list[float]] = {name: [] for name in RECOLOUR_SCORES}
    for pixels, item in zip(uint8_pixels(images), items):
        scores = compare(item.target, read_scene(pixels))
        for name in RECOLOUR_SCORES:
            values[name].append(float(scores[name]))
    return values


def inpaint_scores(images: torch.Tensor, inputs: torch.Tensor, masks: np.ndarray,
                   items: Sequence[InpaintItem]) -> dict[str, list[float]]:
    """Each INPAINT_SCORES name → one value per image; ``images`` the edited [N, 3, H, W] and
    ``inputs`` the originals, both in [0, 1]; ``masks`` bool [N, H, W] (True: repainted);
    image n edited for ``items[n]``."""
    _check_count(images, items)
    if inputs.shape != images.shape or tuple(masks.shape) != (images.shape[0],
                                                              *images.shape[2:]):
        raise ValueError(f"inputs {tuple(inputs.shape)} and masks {tuple(masks.shape)} do not "
                         f"fit images {tuple(images.shape)}")
    values: dict[str, list[float]] = {name: [] for name in INPAINT_SCORES}
    change = (images.float() - inputs.float()).abs().mean(dim=1).numpy()  # [N, H, W]
    for pixels, mask, diff, item in zip(uint8_pixels(images), masks, change, items):
        background = item.source.background
        inside = read_scene(_fill(pixels, ~mask, background))
        added = compare(Scene((item.added,), background), inside)
        for attribute in ("shape", "colour", "size", "position", "count", "all"):
            values[f"added_{attribute}"].append(float(added[attribute]))
        outside = read_scene(_fill(pixels, mask, background))
        values["kept_all"].append(float(compare(item.source, outside)["all"]))
        values["outside_change"].append(float(diff[~mask].mean()))
    return values


def _fill(pixels: np.ndarray, where: np.ndarray, background: str) -> np.ndarray:
    """A copy of uint8 ``pixels`` [H, W, 3] with the pixels ``where`` [H, W] set to the named
    background's exact colour."""
    filled = pixels.copy()
    filled[where] = BACKGROUNDS[background]
    return filled


def _check_count(images: torch.Tensor, items: Sequence) -> None:
    if images.shape[0] != len(items):
        raise ValueError(f"{images.shape[0]} images for {len(items)} items")
