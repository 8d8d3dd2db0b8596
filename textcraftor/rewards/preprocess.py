"""Differentiable CLIP preprocessing: [0,1] images -> normalised pixels, torch only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# OpenAI CLIP's pixel statistics; the LAION/open_clip ViT-H/ViT-g models reuse them.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_images(images: torch.Tensor) -> None:
    """Cheap boundary check (no device sync): float NCHW with 3 channels.

    The [0,1] value range is the caller's contract; checking it would force a sync per step.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be float NCHW (B,3,H,W) in [0,1], got shape "
                         f"{tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0,1], got dtype {images.dtype}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images have an empty spatial size: {tuple(images.shape)}")


def to_clip_pixels(
    images: torch.Tensor,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> (B,3,size,size) normalised, differentiable in ``images``.

    Downsizing (both sides >= size) averages with ``adaptive_avg_pool2d`` as TextCraftor's code
    does (non-square inputs are squashed, not cropped); upsizing is bilinear without antialias.
    """
    check_images(images)
    height, width = images.shape[-2:]
    if (height, width) != (size, size):
        if height >= size and width >= size:
            images = F.adaptive_avg_pool2d(images, (size, size))
        else:
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", align_corners=False, antialias=False
            )
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t
