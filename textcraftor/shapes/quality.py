"""ShapesWorld's programmatic "visual quality": what the world's aesthetic head learns to predict.

The score (0..10, like the AVA scale LAION's predictor outputs) rewards bold, clean pictures:

    quality = 10 · (0.35·contrast + 0.25·saturation + 0.25·centring + 0.15·cleanliness)

- contrast: mean RGB distance of foreground pixels from the background, over 255·√3;
- saturation: mean HSV saturation of foreground pixels;
- centring: 1 − distance of the foreground's centroid from the image centre, over half the
  diagonal;
- cleanliness: 1 − mean RGB distance of background pixels from their median, over 64 (clamped).

The background colour is the median of the border pixels; a pixel is foreground when it is more
than ``FOREGROUND_DISTANCE`` from it. An image with no foreground scores only its cleanliness.
The score deliberately ignores the prompt: it prefers centred shapes, so optimising it alone
fights prompts that ask for "on the left" — the reward hacking the CLIP constraint should hold
back.
"""

from __future__ import annotations

import math

import torch

FOREGROUND_DISTANCE = 48.0 / 255.0  # same threshold as the oracle, on [0,1] pixels
WEIGHTS = {"contrast": 0.35, "saturation": 0.25, "centring": 0.25, "cleanliness": 0.15}


def quality_terms(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each term in [0, 1] per image, for float images [B,3,H,W] in [0,1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
    x = images.detach().float().clamp(0, 1)
    b, _, h, w = x.shape
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)
    background = border.median(dim=2).values[:, :, None, None]  # [B,3,1,1]
    distance = (x - background).norm(dim=1)  # [B,H,W]
    foreground = (distance > FOREGROUND_DISTANCE).float()
    area = foreground.sum(dim=(1, 2))
    has = area > 0
    safe_area = area.clamp_min(1.0)
    contrast = (distance * foreground).sum(dim=(1, 2)) / safe_area / math.sqrt(3)
    high, low = x.max(dim=1).values, x.min(dim=1).values
    saturation_map = (high - low) / high.clamp_min(1e-6)
    saturation = (saturation_map * foreground).sum(dim=(1, 2)) / safe_area
    ys = (torch.arange(h, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, dtype=x.dtype) + 0.5) / w
    cy = (foreground.sum(dim=2) * ys).sum(dim=1) / safe_area
    cx = (foreground.sum(dim=1) * xs).sum(dim=1) / safe_area
    centring = 1.0 - torch.sqrt((cx - 0.5) ** 2 + (cy - 0.5) ** 2) / math.sqrt(0.5)
    background_pixels = (1.0 - foreground).sum(dim=(1, 2)).clamp_min(1.0)
    spread = (distance * (1.0 - foreground)).sum(dim=(1, 2)) / background_pixels
    cleanliness = (1.0 - spread / (64.0 / 255.0)).clamp(0, 1)
    zero = torch.zeros(b)
    return {
        "contrast": torch.where(has, contrast, zero),
        "saturation": torch.where(has, saturation, zero),
        "centring": torch.where(has, centring, zero),
        "cleanliness": cleanliness,
    }


def quality_score(images: torch.Tensor) -> torch.Tensor:
    """[B] scores in [0, 10] (not differentiable: the aesthetic head is)."""
    terms = quality_terms(images)
    return 10.0 * sum(weight * terms[name] for name, weight in WEIGHTS.items())
