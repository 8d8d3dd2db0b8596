"""Inpainting masks: the box of a named ShapesWorld position, and the check every mask passes
before a pipeline sees it.

A mask marks the pixels to repaint with 1 (diffusers' convention). diffusers binarises a mask
at 0.5 (``VaeImageProcessor(do_binarize=True)``) and shrinks it to the latent grid by nearest
interpolation (``prepare_mask_latents``); a position mask is aligned to that grid, so the
pixels it marks are exactly those whose latent cells are repainted.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from textcraftor.shapes.world import POSITIONS, ShapeSpec, shape_box

MASK_SIZE = "large"  # a position's mask holds the largest shape the world draws there


def position_mask(position: str, side: int, factor: int) -> np.ndarray:
    """Bool [side, side], True inside the box a large shape at ``position`` fills
    (``world.shape_box``), grown outward to multiples of ``factor`` pixels (the VAE's
    down-sampling, so every latent cell is wholly in or out) and clipped to the image.
    Raises ValueError for an unknown position or a ``side`` that ``factor`` does not divide."""
    if position not in POSITIONS:
        raise ValueError(f"position: {position!r} is not one of {', '.join(POSITIONS)}")
    if factor < 1 or side % factor:
        raise ValueError(f"side {side} is not a multiple of the VAE factor {factor}")
    x0, y0, x1, y1 = shape_box(ShapeSpec("square", None, MASK_SIZE, position), side)
    left, top = (max(0, math.floor(v / factor) * factor) for v in (x0, y0))
    right, bottom = (min(side, math.ceil(v / factor) * factor) for v in (x1, y1))
    mask = np.zeros((side, side), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def check_mask(mask: torch.Tensor | np.ndarray, height: int, width: int,
               count: int | None = None, name: str = "mask_image") -> torch.Tensor:
    """The masks as float [B, 1, height, width] in {0, 1} (1: repaint), binarised at 0.5 as
    diffusers does. ``mask``: [B, 1, H, W] or [B, H, W] (numpy or torch, bool or numbers in
    [0, 1]); ``count``: the B the images have, when known.

    Raises ValueError naming ``name``, the value and what is allowed, for: another number of
    dimensions, another H×W than the images', another B, a value outside [0, 1] or not finite,
    and a mask with no pixel at or above 0.5 (all zeros: nothing to repaint)."""
    tensor = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    allowed = (f"[B, 1, {height}, {width}] or [B, {height}, {width}]"
               + (f" with B = {count}" if count is not None else ""))
    if tensor.ndim == 3:
        tensor = tensor[:, None]
    if (tensor.ndim != 4 or tensor.shape[1] != 1 or tuple(tensor.shape[2:]) != (height, width)
            or (count is not None and tensor.shape[0] != count)):
        raise ValueError(f"{name}: shape {tuple(np.shape(mask))} is not allowed; allowed: "
                         f"{allowed} (the images' size)")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise ValueError(f"{name}: values in [{tensor.min().item():g}, "
                         f"{tensor.max().item():g}] are not allowed; allowed: [0, 1] "
                         "(1 = repaint)")
    binary = (tensor >= 0.5).float()
    empty = [i for i in range(binary.shape[0]) if not binary[i].any()]
    if empty:
        raise ValueError(f"{name}: mask {empty[0]} (of {binary.shape[0]}) is all zeros "
                         "(no pixel ≥ 0.5: nothing to repaint); allowed: a mask that marks "
                         "at least one pixel with 1")
    return binary
