"""The reward interface: ``reward(images, prompts) -> Tensor[B]``, differentiable in images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, check_images, to_clip_pixels


class Reward(nn.Module):
    """A frozen image(-text) scorer.

    ``forward(images, prompts)`` takes float NCHW images in [0,1] (any H, W) and one prompt per
    image and returns float32 scores of shape [B]. Gradients flow from the scores into
    ``images`` only: the scorer's weights are frozen and text features are computed under
    ``no_grad`` and cached per prompt string (the cache is dropped when the module is moved).
    The module stays in eval mode even if a parent calls ``.train()``.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.text_cache: dict[str, torch.Tensor] = {}

    def freeze(self) -> Reward:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Reward:
        return super().train(False)

    def _apply(self, fn, recurse=True):  # .to()/.half()/.cuda(): cached features would be stale
        self.text_cache.clear()
        return super()._apply(fn, recurse)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_images(images)
        if isinstance(prompts, str) or len(prompts) != images.shape[0]:
            raise ValueError(f"need one prompt per image: {images.shape[0]} images, prompts="
                             f"{prompts!r}")
        pixels = to_clip_pixels(images.to(self.dtype), self.image_size, self.mean, self.std)
        return self.score(pixels, list(prompts)).float()

    def score(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores [B] from normalised pixels (B,3,S,S); implemented by each reward."""
        raise NotImplementedError

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text features (N, D) for distinct prompts; called under ``no_grad`` by the cache."""
        raise NotImplementedError(f"{type(self).__name__} does not use text")

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Cached ``encode_text`` features stacked in prompt order: (B, D), no grad."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.text_cache]
        if missing:
            with torch.no_grad():
                features = self.encode_text(missing)
            for prompt, feature in zip(missing, features, strict=True):
                self.text_cache[prompt] = feature.detach()
        return torch.stack([self.text_cache[p] for p in prompts])
