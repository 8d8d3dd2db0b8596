"""The tasks' items: ShapesWorld scenes, the prompts that ask for an edit, and what the edited
image should show. Item i of a task is a pure function of (item seed, task, i).

Prompts are the world's full captions (``world.describe``: every shape's size, colour, shape
and position, then the background), two shapes joined with "and" as the world's captions join
them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from textcraftor.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SIZES,
    Scene,
    ShapeSpec,
    apart,
    describe,
    render,
    sample_scene,
    shape_box,
)

from .masks import position_mask

# Two shapes share a scene left with right or top with bottom (world.POSITIONS): the side
# opposite the first shape is where inpainting adds the second.
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
TASK_STREAM = {"recolour": 0, "inpaint": 1}  # each task draws its scenes from its own stream


@dataclass(frozen=True)
class RecolourItem:
    """Recolour one shape: the image of ``source``, the prompt naming ``target``."""

    index: int  # the item's number in its task
    source: Scene  # one shape, every attribute set: the input image's scene
    target: Scene  # the same shape in another colour: what the prompt asks for
    prompt: str  # describe(target)


@dataclass(frozen=True)
class InpaintItem:
    """Add a shape: the image of ``source``, a mask over the empty side, the prompt naming
    both shapes."""

    index: int  # the item's number in its task
    source: Scene  # one shape on the left, right, top or bottom, every attribute set
    added: ShapeSpec  # the shape to add, at the opposite position, every attribute set
    prompt: str  # describe(target): the kept shape "and" the added one

    @property
    def target(self) -> Scene:
        """The scene the edited image should show."""
        return Scene((self.source.shapes[0], self.added), self.source.background)

    def mask(self, side: int, factor: int) -> np.ndarray:
        """Bool [side, side]: the added shape's position (``masks.position_mask``)."""
        return position_mask(self.added.position, side, factor)


def _rng(item_seed: int, task: str, index: int) -> random.Random:
    return random.Random((item_seed << 64) + (TASK_STREAM[task] << 32) + index)


def recolour_items(count: int, item_seed: int = 0) -> list[RecolourItem]:
    """``count`` one-shape scenes (``world.sample_scene``), each with another colour drawn
    from the other seven."""
    items = []
    for index in range(count):
        rng = _rng(item_seed, "recolour", index)
        source = sample_scene(rng, max_shapes=1)
        shape = source.shapes[0]
        colour = rng.choice([c for c in COLOURS if c != shape.colour])
        target = Scene((ShapeSpec(shape.shape, colour, shape.size, shape.position),),
                       source.background)
        items.append(RecolourItem(index, source, target, describe(target)))
    return items


def inpaint_items(count: int, item_seed: int = 0, side: int = 64,
                  factor: int = 4) -> list[InpaintItem]:
    """``count`` scenes of one shape on a side, with a second shape (any shape, colour and
    size) to add on the opposite side. Raises RuntimeError if a mask (``side``, VAE
    ``factor``) would cover the kept shape: the world's geometry guarantees it does not."""
    items = []
    for index in range(count):
        rng = _rng(item_seed, "inpaint", index)
        kept = ShapeSpec(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)),
                         rng.choice(list(OPPOSITE)))
        added = ShapeSpec(rng.choice(SHAPES), rng.choice(list(COLOURS)),
                          rng.choice(list(SIZES)), OPPOSITE[kept.position])
        background = rng.choice(list(BACKGROUNDS))
        item = InpaintItem(index, Scene((kept,), background), added,
                           describe(Scene((kept, added), background)))
        if not apart(kept, added) or _overlaps(item.mask(side, factor), kept, side):
            raise RuntimeError(f"inpainting item {index}: the mask at {added.position} "
                               f"reaches the kept shape at {kept.position}")
        items.append(item)
    return items


def _overlaps(mask: np.ndarray, spec: ShapeSpec, side: int) -> bool:
    x0, y0, x1, y1 = shape_box(spec, side)
    return bool(mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))].any())


def scene_images(scenes: list[Scene], side: int = 64) -> torch.Tensor:
    """The scenes rendered (``world.render``) as float [N, 3, side, side] in [0, 1]."""
    arrays = [np.asarray(render(scene, side), dtype=np.float32) / 255.0 for scene in scenes]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
