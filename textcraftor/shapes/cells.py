"""Where ShapesWorld's shapes are, shared by pretraining and the reliance check: the pixels a
shape covers, the latent cells they fall in, and single-shape scenes to probe them with."""

from __future__ import annotations

import random

import torch

from textcraftor.shapes.world import Scene, sample_scene

LATENT_FACTOR = 4  # pixels per latent cell along a side (three VAE blocks)


def shape_mask(x: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] bool: pixels away from the background (the corner pixel's colour)."""
    return (x - x[:, :, :1, :1]).norm(dim=1, keepdim=True) > 0.35


def single_shape_scenes(count: int, seed: int) -> list[Scene]:
    """``count`` scenes of one shape with every attribute set, deterministic from ``seed``."""
    rng = random.Random(seed)
    return [sample_scene(rng, max_shapes=1) for _ in range(count)]
