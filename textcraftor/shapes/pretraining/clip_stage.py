"""Stage 1: a small CLIP (``CLIPModel``: text and vision towers) trained contrastively, plus a
word-identity term (a linear probe, then dropped, must read each caption token from its own
last hidden state) so that the states the UNet attends to keep their words. Its text tower
becomes the pipeline's text encoder."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTextModel

from textcraftor.models import CLIP_VOCAB_SIZE
from textcraftor.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from textcraftor.sampler import PromptTokenizer
from textcraftor.shapes.pretraining.config import IMAGE_SIZE, WIDTH, PretrainConfig
from textcraftor.shapes.pretraining.loop import Clock, adamw, descend, run_stage
from textcraftor.shapes.world import caption_words


def clip_config() -> CLIPConfig:
    """Text and vision towers of width ``WIDTH``, 3 layers each; SD's CLIP vocabulary."""
    text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
                hidden_act="quick_gelu", projection_dim=WIDTH, bos_token_id=49406,
                eos_token_id=49407, pad_token_id=49407)
    vision = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=WIDTH,
                  intermediate_size=4 * WIDTH, num_hidden_layers=3, num_attention_heads=4,
                  hidden_act="quick_gelu", projection_dim=WIDTH)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=WIDTH)


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images [B,3,H,W] in [0,1] → the CLIP's input (OpenAI CLIP's mean and std)."""
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def word_classes(tokenizer) -> torch.Tensor:
    """[vocab_size] int64: a class for each token id a caption of the world can hold (its
    words' tokens, ':', start and end of text), -100 (ignored by the loss) for every other id."""
    ids = sorted(set(tokenizer(" ".join(sorted(caption_words())) + " :").input_ids))
    classes = torch.full((len(tokenizer),), -100, dtype=torch.long)
    classes[torch.tensor(ids)] = torch.arange(len(ids))
    return classes


def word_identity_loss(hidden: torch.Tensor, ids: torch.Tensor, classes: torch.Tensor,
                       probe: torch.nn.Linear, end_of_text: int) -> torch.Tensor:
    """Cross-entropy of each token's class read by a linear ``probe`` from the text tower's
    last hidden state (``hidden`` [B,L,W], ``ids`` [B,L]); the pads after the first end of text
    are ignored. Contrastive training alone trains only the end-of-text state: the other states,
    which the UNet's cross-attention reads, end up dominated by their context (v5: the same
    word's states in different captions have mean cosine 0.39, the means of distinct words
    0.54). With this term they keep their word (0.91 / -0.02), closer to the one-hot encoding
    on which the UNet learns shape (DESIGN.md, sixth session)."""
    first_end = (ids == end_of_text).int().argmax(1, keepdim=True)
    positions = torch.arange(ids.shape[1], device=ids.device)
    target = classes[ids].masked_fill(positions > first_end, -100)
    return F.cross_entropy(probe(hidden).flatten(0, 1), target.flatten())


def train_clip(config: PretrainConfig, clock: Clock, tokens: PromptTokenizer,
               data: Iterator[tuple[torch.Tensor, list[str]]]) -> tuple[CLIPModel, dict]:
    """The CLIP after ``config.clip_steps`` steps on ``data`` (frozen, in eval mode), and the
    stage's statistics."""
    torch.manual_seed(config.seed)
    model = CLIPModel(clip_config())
    probe = classes = None  # the probe is read only during this stage, then dropped
    if config.word_identity_weight:
        classes = word_classes(tokens.tokenizer)
        probe = torch.nn.Linear(WIDTH, int(classes.max()) + 1)
    trained = model if probe is None else torch.nn.ModuleList([model, probe])
    optimizer, lr = adamw(trained, config.lr, config.clip_steps)
    end_of_text = tokens.tokenizer.eos_token_id

    def step(_: int) -> float:
        images, captions = next(data)
        ids = tokens(captions)
        out = model(input_ids=ids, pixel_values=clip_pixels(images), return_loss=True)
        loss = out.loss
        if probe is not None:
            loss = loss + config.word_identity_weight * word_identity_loss(
                out.text_model_output.last_hidden_state, ids, classes, probe, end_of_text)
        return descend(loss, optimizer, lr)

    stats = run_stage("clip", config.clip_steps, clock, step)
    return model.eval().requires_grad_(False), stats


def text_encoder_of(model: CLIPModel) -> CLIPTextModel:
    """The CLIP's text tower as SD's ``CLIPTextModel`` (same weights, same names)."""
    encoder = CLIPTextModel(model.config.text_config)
    encoder.load_state_dict(model.text_model.state_dict())
    return encoder.eval().requires_grad_(False)
