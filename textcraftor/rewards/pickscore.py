"""PickScore: a CLIP-H fine-tuned on Pick-a-Pic; score = logit_scale.exp() * cos(text, image)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer

from .base import Reward
from .sources import RewardSource, hub_or_folder

log = logging.getLogger(__name__)


def projected(output: object) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output object in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipModelSimilarity(Reward):
    """cos(text, image) of a transformers ``CLIPModel``, in [-1, 1]; matched pairs only: row i
    scores image i against prompt i."""

    def __init__(self, model: CLIPModel, tokenizer: CLIPTokenizer) -> None:
        super().__init__(image_size=model.config.vision_config.image_size)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = min(tokenizer.model_max_length,
                              model.config.text_config.max_position_embeddings)
        self.freeze()

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=self.max_length, return_tensors="pt").to(self.device)
        features = projected(self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
        return F.normalize(features, dim=-1)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B,3,S,S) -> unnormalised image embeddings (B, D)."""
        return projected(self.model.get_image_features(pixel_values=pixels))

    def score(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image = F.normalize(self.image_embeddings(pixels), dim=-1)
        text = self.text_features(prompts).to(image.dtype)
        return (image * text).sum(dim=-1)


class PickScoreReward(ClipModelSimilarity):
    """logit_scale.exp() · cos(text, image), ~[0, 100]."""

    def score(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.model.logit_scale.exp() * super().score(pixels, prompts)


def load_clip_model(source: RewardSource) -> tuple[CLIPModel, CLIPTokenizer]:
    """``source.source``: the CLIPModel; ``source.backbone``: tokenizer (default: same place)."""
    model = CLIPModel.from_pretrained(hub_or_folder(source.source), dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(hub_or_folder(source.backbone or source.source))
    return model, tokenizer


def load_pickscore(source: RewardSource) -> PickScoreReward:
    """``source.source``: the CLIPModel; ``source.backbone``: tokenizer (default: same place)."""
    model, tokenizer = load_clip_model(source)
    log.info("pickscore: model %s, tokenizer %s", source.source, source.backbone or source.source)
    return PickScoreReward(model, tokenizer)
