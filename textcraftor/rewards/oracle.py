"""The ShapesWorld oracle's alignment as a reward: 1 when every attribute the prompt names is
read back from the image, else 0 — a reward with no gradient (policy_gradient trains on it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class OracleReward(nn.Module):
    """``reward(images, prompts) -> Tensor[B]`` of 0/1, float32 on the images' device.

    images: float NCHW in [0,1]. The oracle reads uint8 pixels on the CPU (``shapes.oracle``),
    so the scores are constants: no gradient reaches the images. An image whose prompt names
    no shape (the oracle cannot score it) earns 0. No weights; stays in eval mode."""

    differentiable = False

    def train(self, mode: bool = True) -> OracleReward:
        return super().train(False)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        from textcraftor.shapes.oracle import image_alignments

        if isinstance(prompts, str) or len(prompts) != images.shape[0]:
            raise ValueError(f"need one prompt per image: {images.shape[0]} images, prompts="
                             f"{prompts!r}")
        scores = [s["all"] or 0.0 for s in image_alignments(images, list(prompts))]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)
