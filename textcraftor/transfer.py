"""A text encoder tuned on one base model, used with another's UNet (the paper's SD v1.5 → SDXL
transfer: the same text tower, another UNet).

A tuned encoder fits a target pipeline when it has the target encoder's shape — the same
token-embedding rows (its tokenizer's vocabulary), hidden size and positions — and when the
target's tokenizer gives ids inside that vocabulary. ``check_text_encoder_fits`` compares them
and names both sides when they differ, before any image is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from textcraftor.configio import ConfigError

# the state-dict keys' endings (transformers 5's CLIPTextModel has no "text_model." prefix)
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"
POSITION_EMBEDDING = "embeddings.position_embedding.weight"


@dataclass(frozen=True)
class EncoderShape:
    """What a text encoder's weights say about the tokens it reads."""

    vocab_size: int  # rows of the token embedding: the tokenizer's vocabulary
    hidden_size: int  # width of every hidden state the UNet reads (its cross-attention)
    positions: int  # position embeddings: the longest prompt in tokens

    def describe(self) -> str:
        return (f"hidden size {self.hidden_size}, vocabulary {self.vocab_size}, "
                f"{self.positions} positions")


def encoder_shape(weights: Mapping[str, torch.Tensor]) -> EncoderShape:
    """The shape of a CLIPTextModel state dict. Raises ConfigError when it is not one."""
    found = {}
    for ending in (TOKEN_EMBEDDING, POSITION_EMBEDDING):
        key = next((k for k in weights if k == ending or k.endswith("." + ending)), None)
        if key is None:
            raise ConfigError(f"the weights are not a CLIP text encoder's (no {ending})")
        found[ending] = weights[key]
    vocab, hidden = found[TOKEN_EMBEDDING].shape
    return EncoderShape(int(vocab), int(hidden), int(found[POSITION_EMBEDDING].shape[0]))


def check_text_encoder_fits(weights: Mapping[str, torch.Tensor], source: str,
                            encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                            target: str, source_tokenizer: CLIPTokenizer | None = None) -> None:
    """Raise ConfigError naming both models when the tuned encoder ``weights`` (from
    ``source``, e.g. "--text-encoder-from runs/a (model.source=tiny)") cannot drive the
    pipeline of ``target`` (its ``encoder`` and ``tokenizer``): another hidden size, vocabulary
    or number of positions than the target's encoder, a tokenizer whose ids fall outside that
    vocabulary, or (``source_tokenizer``: the tuned run's) another token → id mapping."""
    tuned = encoder_shape(weights)
    config = encoder.config
    own = EncoderShape(config.vocab_size, config.hidden_size, config.max_position_embeddings)
    if tuned != own:
        raise ConfigError(f"{source}: its text encoder ({tuned.describe()}) does not fit the "
                          f"pipeline of {target}, whose text encoder has {own.describe()}; "
                          "a tuned encoder transfers only to a model with the same text tower")
    if len(tokenizer) > tuned.vocab_size:
        raise ConfigError(f"{source}: its text encoder reads {tuned.vocab_size} token ids, but "
                          f"the tokenizer of {target} has {len(tokenizer)}: another tokenizer")
    if source_tokenizer is not None and source_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"{source}: its tokenizer maps tokens to other ids than the tokenizer "
                          f"of {target}: the tuned encoder would read other words")
