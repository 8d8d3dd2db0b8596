"""``python -m textcraftor.shapes.pretrain --out DIR``: the ShapesWorld base model, trained here.

Four stages on ShapesWorld image–caption pairs, each with a step budget (the same seed and
steps give the same weights) under one wall-clock cap:

1. a small CLIP (``CLIPModel``: text and vision towers) trained contrastively, plus a
   word-identity term (a linear probe, then dropped, must read each caption token from its own
   last hidden state) so that the states the UNet attends to keep their words;
2. an "aesthetic" head (LAION's MLP layout) on the CLIP's image embedding, fitted to the
   programmatic quality score of ``textcraftor.shapes.quality`` on degraded renders;
3. a small VAE (``AutoencoderKL``): 64 px images ↔ 16×16×4 latents, trained on 32 px windows
   that each hold a shape (it is fully convolutional; whole images are mostly background), its
   reconstruction loss (squared + absolute error of the decoded posterior mean) weighted
   towards the shapes' pixels;
4. a small UNet (``UNet2DConditionModel``) on the VAE's latents of a pool of pairs encoded once,
   conditioned on the frozen CLIP text encoder's hidden states: ε-prediction on SD v1.5's
   scaled-linear schedule with offset noise (else the backgrounds collapse to grey), min-SNR-5
   timestep weights and extra weight on the shapes' latent cells, 10 % empty captions so
   classifier-free guidance works.

The output is SD's on-disk layout (``model_index.json``, tokenizer, text_encoder, unet, vae,
scheduler — loadable by ``textcraftor.models.load_pipeline``) in fp16, the whole CLIP in
``clip/`` and the head in ``aesthetic/`` for the rewards, ``card.json`` and ``README.md`` (data,
steps, losses, the base model's oracle accuracy, ``samples.png``) and ``checksums.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTextModel

from textcraftor.models import (
    CLIP_VOCAB_SIZE,
    Pipeline,
    load_pipeline,
    sd15_scheduler,
    write_model_index,
)
from textcraftor.rewards.aesthetic import AestheticHead
from textcraftor.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from textcraftor.sampler import PromptTokenizer
from textcraftor.shapes.cells import LATENT_FACTOR, shape_mask, single_shape_scenes
from textcraftor.shapes.quality import quality_score
from textcraftor.shapes.reliance import attribute_reliance
from textcraftor.shapes.world import ShapesDataset, caption_words
from textcraftor.shapes_weights import SHAPES_AESTHETIC_HEAD
from textcraftor.tokenizer import build_clip_tokenizer
from textcraftor.transformers_files import save_transformers_model

log = logging.getLogger("textcraftor.shapes.pretrain")
IMAGE_SIZE = 64
WIDTH = 64  # CLIP width = the UNet's cross-attention width
UNET_CHANNELS = (48, 96)
SHAPE_WEIGHT = 8.0  # VAE loss: extra weight of shape pixels (no corner touches a shape)
UNET_SHAPE_WEIGHT = 4.0  # UNet loss: extra weight of the latent cells a shape touches
MIN_SNR_GAMMA = 5.0  # UNet loss: timestep weight min(SNR, γ) / SNR


@dataclass(frozen=True)
class PretrainConfig:
    out: str  # output folder (a diffusers pipeline folder + clip/ + aesthetic/ + card)
    seed: int = 0  # data, initialisation and noise: the same seed gives the same weights
    clip_steps: int = 1200  # contrastive steps of the small CLIP
    word_identity_weight: float = 1.0  # CLIP stage: weight of the word-identity term (0: off)
    vae_steps: int = 1100  # reconstruction steps of the VAE
    unet_steps: int = 3300  # ε-prediction steps of the UNet
    aesthetic_steps: int = 1500  # regression steps of the aesthetic head
    batch_size: int = 32  # image–caption pairs per CLIP / UNet step
    vae_batch_size: int = 64  # windows per VAE step, each cut from its own image
    vae_window: int = 32  # side of the VAE's training windows, each holding part of a shape
    lr: float = 1e-3  # peak AdamW learning rate of the CLIP, head and UNet (warm-up, cosine)
    vae_lr: float = 2e-3  # peak AdamW learning rate of the VAE
    caption_dropout: float = 0.1  # UNet stage: share of empty captions (for guidance)
    offset_noise: float = 0.1  # UNet stage: std of the per-channel constant added to the noise
    pool_size: int = 16384  # UNet stage: pairs encoded to latents once, then drawn at random
    aesthetic_images: int = 4096  # rendered (and degraded) images the head is fitted on
    max_minutes: float = 60.0  # wall-clock cap over the whole run (a stage stops early past it)
    final_minutes: float = 2.0  # of max_minutes kept for saving and the card's evaluation
    eval_every: int = 660  # UNet steps between progress checks of the oracle (0 = none)
    eval_prompts: int = 64  # single-shape prompts for the base model's oracle accuracy
    eval_steps: int = 25  # DDIM steps at that evaluation
    threads: int = 2  # torch intra-op threads

    def __post_init__(self) -> None:
        at_least = {"seed": 0, "clip_steps": 1, "vae_steps": 1, "unet_steps": 1,
                    "aesthetic_steps": 1, "batch_size": 2, "vae_batch_size": 1,
                    "pool_size": self.batch_size, "aesthetic_images": 10, "eval_every": 0,
                    "eval_prompts": 1, "eval_steps": 1, "threads": 1}
        for name, least in at_least.items():
            value = getattr(self, name)
            if value < least:
                why = " (batch_size)" if name == "pool_size" else ""
                raise ValueError(f"{name} must be an integer >= {least}{why}, got {value}")
        if not self.word_identity_weight >= 0:
            raise ValueError(f"word_identity_weight must be >= 0 (0 turns it off), "
                             f"got {self.word_identity_weight:g}")
        for name in ("lr", "vae_lr", "max_minutes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name):g}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout:g}")
        if not self.offset_noise >= 0:
            raise ValueError(f"offset_noise must be >= 0, got {self.offset_noise:g}")
        windows = range(2 * LATENT_FACTOR, IMAGE_SIZE + 1, LATENT_FACTOR)
        if self.vae_window not in windows:
            raise ValueError(f"vae_window must be a multiple of {LATENT_FACTOR} in "
                             f"[{windows[0]}, {IMAGE_SIZE}] (pixels per latent cell), "
                             f"got {self.vae_window}")
        if not 0 <= self.final_minutes < self.max_minutes:
            raise ValueError(f"final_minutes must be in [0, max_minutes = {self.max_minutes:g}), "
                             f"got {self.final_minutes:g}")


def clip_config() -> CLIPConfig:
    text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
                hidden_act="quick_gelu", projection_dim=WIDTH, bos_token_id=49406,
                eos_token_id=49407, pad_token_id=49407)
    vision = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=WIDTH,
                  intermediate_size=4 * WIDTH, num_hidden_layers=3, num_attention_heads=4,
                  hidden_act="quick_gelu", projection_dim=WIDTH)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=WIDTH)


def vae_config() -> dict:
    """64 px ↔ 16×16×4; no attention (flat shapes need none, and it is a third of the cost)."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(16, 32, 64), norm_num_groups=8, sample_size=IMAGE_SIZE,
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, mid_block_add_attention=False)


def unet_config() -> dict:
    """16×16 latents, cross-attention at 8×8 only (at 16×16 it would triple the step time);
    2.2 M parameters."""
    return dict(sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=UNET_CHANNELS, cross_attention_dim=WIDTH, attention_head_dim=8,
                norm_num_groups=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))


def batches(dataset: ShapesDataset, batch_size: int, start: int = 0
            ) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(images [B,3,64,64] float in [0,1], captions), endlessly, from item ``start`` on."""
    index = start
    while True:
        images, captions, _ = dataset.batch(index, batch_size)
        index += batch_size
        yield images.float() / 255.0, captions


class Clock:
    """The run's wall-clock cap, shared by the stages."""

    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + 60.0 * minutes

    def out_of_time(self) -> bool:
        return time.monotonic() >= self.deadline


def stage_clock(config: PretrainConfig) -> Clock:
    """The training stages' clock: it runs out ``final_minutes`` before ``max_minutes``, so
    saving, the 64-prompt oracle, the VAE's ceiling and the reliance check (1.0 min measured
    on 2 threads) still finish inside the cap."""
    return Clock(config.max_minutes - config.final_minutes)


def schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 100):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        progress = (i - warmup) / max(steps - warmup, 1)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run_stage(name: str, steps: int, clock: Clock, step: Callable[[int], float],
              every: int = 0, check: Callable[[int], dict] | None = None) -> dict:
    """Call ``step(i)`` (returns the loss) ``steps`` times or until the clock runs out;
    ``check(i)`` every ``every`` steps adds a progress record."""
    started, losses, progress = time.monotonic(), [], []
    i = 0
    while i < steps and not clock.out_of_time():
        losses.append(step(i))
        i += 1
        if i % 100 == 0:
            log.info("%s step %d: loss %.4f", name, i, sum(losses[-100:]) / 100)
        if check is not None and every and i % every == 0 and i < steps:
            progress.append({"step": i, **check(i)})
            log.info("%s step %d: %s", name, i, progress[-1])
    tail = losses[-100:] or [math.nan]
    stats = {"steps": i, "planned_steps": steps, "seconds": round(time.monotonic() - started, 1),
             "first_loss": losses[0] if losses else math.nan, "last_loss": sum(tail) / len(tail)}
    return {**stats, "progress": progress} if progress else stats


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def adamw(module: torch.nn.Module, lr: float, steps: int, weight_decay: float = 0.01):
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    return optimizer, schedule(optimizer, steps)


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


def train_clip(config: PretrainConfig, clock: Clock, tokens: PromptTokenizer, data
               ) -> tuple[CLIPModel, dict]:
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
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr.step()
        return loss.item()

    stats = run_stage("clip", config.clip_steps, clock, step)
    return model.eval().requires_grad_(False), stats


def train_vae(config: PretrainConfig, clock: Clock, data) -> tuple[AutoencoderKL, dict]:
    torch.manual_seed(config.seed + 1)
    vae = AutoencoderKL(**vae_config())
    optimizer, lr = adamw(vae, config.vae_lr, config.vae_steps, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed + 1)

    def step(_: int) -> float:
        images, _ = next(data)
        full = images * 2 - 1
        x, weights = shape_windows(full, shape_weights(full), config.vae_window, generator)
        posterior = vae.encode(x).latent_dist
        # decoded from the mean, as every user of these latents encodes: sampling would make
        # early training fight unit-variance noise until the variance shrinks
        error = vae.decode(posterior.mean).sample - x
        loss = (weights * (error**2 + error.abs())).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr.step()
        return loss.item()

    stats = run_stage("vae", config.vae_steps, clock, step)
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # SD's convention: scaled latents have unit variance
        images, _ = next(data)
        spread = vae.encode(images * 2 - 1).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / max(spread, 1e-3))
    stats["scaling_factor"] = vae.config.scaling_factor
    return vae, stats


def shape_windows(x: torch.Tensor, weights: torch.Tensor, side: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A side×side window of each image [B,C,H,W] (and of its pixel weights [B,1,H,W]) at a
    random place that holds a random shape pixel. A fully convolutional VAE trained on such
    windows sees four times the shapes per step that whole 64 px images (mostly background)
    give it, for 13 % more time: its own reconstructions of 384 single-shape renders read
    shape 0.87 after 1,100 steps, against 0.63 when it was trained on whole images."""
    height, width = x.shape[-2:]
    if side >= min(height, width):
        return x, weights
    on_shape = (weights[:, 0] > 1).flatten(1).float() + 1e-6  # any pixel when there is none
    pixel = torch.multinomial(on_shape, 1, generator=generator).squeeze(1)
    jitter = torch.randint(0, side, (2, len(x)), generator=generator)
    top = ((pixel // width) - jitter[0]).clamp(0, height - side).tolist()
    left = ((pixel % width) - jitter[1]).clamp(0, width - side).tolist()
    windows = [(slice(None), slice(y, y + side), slice(x0, x0 + side))
               for y, x0 in zip(top, left)]
    return (torch.stack([image[w] for image, w in zip(x, windows)]),
            torch.stack([weight[w] for weight, w in zip(weights, windows)]))


def shape_weights(x: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W]: 1 on the background, 1 + SHAPE_WEIGHT on shapes."""
    return 1.0 + SHAPE_WEIGHT * shape_mask(x).float()


@torch.no_grad()
def encode_pool(config: PretrainConfig, tokens: PromptTokenizer, text_encoder: CLIPTextModel,
                vae: AutoencoderKL, dataset: ShapesDataset, start: int) -> UNetPool:
    """The UNet's training pairs, encoded once (16,384 contexts take 0.3 GB)."""
    latents, contexts, masks = [], [], []
    for offset in range(0, config.pool_size, 256):
        count = min(256, config.pool_size - offset)
        images, captions, _ = dataset.batch(start + offset, count)
        x = images.float() / 127.5 - 1
        latents.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
        contexts.append(text_encoder(tokens(captions), return_dict=False)[0])
        masks.append(F.max_pool2d(shape_mask(x).float(), LATENT_FACTOR) > 0)
    empty = text_encoder(tokens([""]), return_dict=False)[0]
    return UNetPool(torch.cat(latents), torch.cat(contexts), torch.cat(masks), empty)


@dataclass(frozen=True)
class UNetPool:
    latents: torch.Tensor  # [N,4,16,16] scaled VAE latents (posterior means)
    contexts: torch.Tensor  # [N,77,WIDTH] frozen text encoder's last hidden states
    shape_masks: torch.Tensor  # [N,1,16,16] bool: latent cells that a shape's pixels touch
    empty_context: torch.Tensor  # [1,77,WIDTH] hidden states of the empty caption


def unet_loss_weights(noise_schedule: DDPMScheduler, t: torch.Tensor,
                      shape_masks: torch.Tensor) -> torch.Tensor:
    """[B,1,16,16]: min-SNR-γ weighting over timesteps (Hang et al. 2023: the high-SNR steps
    stop dominating the gradient) times 1 + UNET_SHAPE_WEIGHT on the shapes' latent cells."""
    alpha_bar = noise_schedule.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    per_step = snr.clamp(max=MIN_SNR_GAMMA) / snr
    return per_step.view(-1, 1, 1, 1) * (1 + UNET_SHAPE_WEIGHT * shape_masks.float())


def train_unet(config: PretrainConfig, clock: Clock, tokens: PromptTokenizer,
               text_encoder: CLIPTextModel, vae: AutoencoderKL, dataset: ShapesDataset,
               check: Callable[[UNet2DConditionModel], dict] | None = None,
               ) -> tuple[UNet2DConditionModel, dict]:
    started = time.monotonic()
    pool = encode_pool(config, tokens, text_encoder, vae, dataset, start=2 * 10**8)
    encode_seconds = round(time.monotonic() - started, 1)
    torch.manual_seed(config.seed + 2)
    unet = UNet2DConditionModel(**unet_config())
    noise_schedule = DDPMScheduler.from_config(sd15_scheduler().config)
    optimizer, lr = adamw(unet, config.lr, config.unet_steps)
    generator = torch.Generator().manual_seed(config.seed + 2)

    def step(_: int) -> float:
        pick = torch.randint(0, len(pool.latents), (config.batch_size,), generator=generator)
        dropped = torch.rand(config.batch_size, generator=generator) < config.caption_dropout
        context = torch.where(dropped[:, None, None], pool.empty_context, pool.contexts[pick])
        clean = pool.latents[pick]
        # offset noise: a per-channel constant in the noise, or the model never learns to move
        # the image's mean (the background), which SD's schedule leaks through even at t = 999
        noise = torch.randn(clean.shape, generator=generator) + config.offset_noise * torch.randn(
            (config.batch_size, clean.shape[1], 1, 1), generator=generator)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (config.batch_size,),
                          generator=generator)
        noisy = noise_schedule.add_noise(clean, noise, t)
        error = unet(noisy, t, encoder_hidden_states=context).sample - noise
        weights = unet_loss_weights(noise_schedule, t, pool.shape_masks[pick])
        loss = (weights * error**2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr.step()
        return loss.item()

    def progress(_: int) -> dict:
        unet.eval()
        result = check(unet) if check is not None else {}
        unet.train()
        return result

    stats = run_stage("unet", config.unet_steps, clock, step, config.eval_every,
                      progress if check is not None else None)
    return unet.eval().requires_grad_(False), {**stats, "encode_seconds": encode_seconds}


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur, noise, fading and shifts, so that the quality scores span their range."""
    from torchvision.transforms.functional import gaussian_blur

    out = []
    for image in images:
        draw = torch.rand(5, generator=generator)
        if draw[0] < 0.5:
            sigma = 0.3 + 2.0 * float(draw[1])
            image = gaussian_blur(image[None], kernel_size=9, sigma=sigma)[0]
        if draw[2] < 0.5:
            image = image.lerp(image.mean(dim=0, keepdim=True).expand_as(image), float(draw[3]))
        if draw[4] < 0.5:
            image = image + 0.15 * float(draw[1]) * torch.randn(image.shape, generator=generator)
        out.append(image.clamp(0, 1))
    return torch.stack(out)


def train_aesthetic(config: PretrainConfig, clock: Clock, clip: CLIPModel,
                    dataset: ShapesDataset) -> tuple[AestheticHead, dict]:
    """The head on unit-norm CLIP image embeddings → ``quality_score``, like LAION's predictor;
    10 % of the images held out for the card's correlation."""
    generator = torch.Generator().manual_seed(config.seed + 3)
    embeddings, scores = [], []
    with torch.no_grad():
        for start in range(0, config.aesthetic_images, 256):
            count = min(256, config.aesthetic_images - start)
            images, _, _ = dataset.batch(3 * 10**8 + start, count)
            images = degrade(images.float() / 255.0, generator)
            scores.append(quality_score(images))
            features = clip.get_image_features(pixel_values=clip_pixels(images))
            features = features if isinstance(features, torch.Tensor) else features.pooler_output
            embeddings.append(F.normalize(features, dim=-1))
    x, y = torch.cat(embeddings), torch.cat(scores)
    split = len(x) * 9 // 10
    torch.manual_seed(config.seed + 3)
    head = AestheticHead(input_dim=WIDTH)
    optimizer, lr = adamw(head, config.lr, config.aesthetic_steps)

    def step(_: int) -> float:
        pick = torch.randint(0, split, (256,), generator=generator)
        loss = F.mse_loss(head(x[pick]).squeeze(-1), y[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr.step()
        return loss.item()

    head.train()
    stats = run_stage("aesthetic", config.aesthetic_steps, clock, step)
    head.eval().requires_grad_(False)
    predicted, actual = head(x[split:]).squeeze(-1), y[split:]
    stats["heldout_pearson"] = float(torch.corrcoef(torch.stack([predicted, actual]))[0, 1])
    stats["heldout_mae"] = float((predicted - actual).abs().mean())
    stats["score_range"] = [float(y.min()), float(y.max())]
    return head, stats


def text_encoder_of(model: CLIPModel) -> CLIPTextModel:
    """The CLIP's text tower as SD's ``CLIPTextModel`` (same weights, same names)."""
    encoder = CLIPTextModel(model.config.text_config)
    encoder.load_state_dict(model.text_model.state_dict())
    return encoder.eval().requires_grad_(False)


def pretrain(config: PretrainConfig) -> Path:
    torch.set_num_threads(config.threads)
    clock = stage_clock(config)
    started = time.monotonic()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(out / "tokenizer")
    tokens = PromptTokenizer(tokenizer)
    dataset = ShapesDataset(seed=config.seed, image_size=IMAGE_SIZE)
    # disjoint item ranges per stage: the stages see different samples of the world
    clip, clip_stats = train_clip(config, clock, tokens, batches(dataset, config.batch_size, 0))
    head, aesthetic_stats = train_aesthetic(config, clock, clip, dataset)
    vae, vae_stats = train_vae(config, clock,
                               batches(dataset, config.vae_batch_size, 10**8))
    text_encoder = text_encoder_of(clip)
    scheduler = sd15_scheduler()

    def check(unet: UNet2DConditionModel) -> dict:
        pipeline = Pipeline(tokenizer, text_encoder, text_encoder, unet, vae, scheduler,
                            "pretraining")
        return oracle_accuracy(pipeline, 16, config.eval_steps, config.seed)

    unet, unet_stats = train_unet(config, clock, tokens, text_encoder, vae, dataset, check)
    save_weights(out, clip, text_encoder, unet, vae, head, scheduler)
    pipeline = load_pipeline(str(out))
    oracle = oracle_accuracy(pipeline, config.eval_prompts, config.eval_steps, config.seed,
                             grid=out / "samples.png")
    ceiling = reconstruction_accuracy(pipeline.vae, config.eval_prompts, config.seed)
    reliance = attribute_reliance(pipeline, 2 * config.eval_prompts, config.seed)
    card = {"data": f"ShapesWorld seed {config.seed}, {IMAGE_SIZE} px, 1–2 shapes per image",
            "config": asdict(config),
            "stages": {"clip": clip_stats, "aesthetic": aesthetic_stats, "vae": vae_stats,
                       "unet": unet_stats},
            "minutes": round((time.monotonic() - started) / 60, 1),
            "oracle": oracle,
            "vae_reconstruction_oracle": ceiling,
            "attribute_reliance": reliance,
            "quality_score": QUALITY_DEFINITION}
    write_card(out, card)
    log.info("wrote %s: %s", out, json.dumps(card["stages"]))
    return out


QUALITY_DEFINITION = ("textcraftor.shapes.quality.quality_score: 10 × (0.35 contrast + 0.25 "
                      "saturation + 0.25 centring + 0.15 cleanliness), each term in [0, 1]")


def save_weights(out: Path, clip: CLIPModel, text_encoder: CLIPTextModel,
                 unet: UNet2DConditionModel, vae: AutoencoderKL, head: AestheticHead,
                 scheduler) -> None:
    """SD's layout, every weight in fp16 (loaders cast back to fp32)."""
    save_transformers_model(clip.half(), out / "clip")
    save_transformers_model(text_encoder.half(), out / "text_encoder")
    unet.half().save_pretrained(out / "unet")
    vae.half().save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    (out / SHAPES_AESTHETIC_HEAD).parent.mkdir(exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in head.state_dict().items()},
              out / SHAPES_AESTHETIC_HEAD)
    for module in (clip, text_encoder, unet, vae):
        module.float()
    write_model_index(out)


def write_card(out: Path, card: dict) -> None:
    """``card.json``, its readable twin ``README.md``, and the checksums of every weight file
    (``checksums.json``) that the loader verifies."""
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(model_card(card))
    write_checksums(out)


def model_card(card: dict) -> str:
    stages = card["stages"]
    rows = "\n".join(
        f"| {name} | {s['steps']} | {s['seconds']:.0f} | {s['first_loss']:.4f} | "
        f"{s['last_loss']:.4f} |" for name, s in stages.items())
    oracle, ceiling = (" · ".join(f"{k} {v:.2f}" for k, v in scores.items()
                                  if k not in ("unscored", "out_of_vocabulary"))
                       for scores in (card["oracle"], card["vae_reconstruction_oracle"]))
    aesthetic = stages["aesthetic"]
    config = card["config"]
    window = config.get("vae_window", IMAGE_SIZE)
    word_identity = ""
    if config.get("word_identity_weight", 0.0):
        word_identity = (", plus a word-identity term (weight "
                         f"{config['word_identity_weight']:g}: a linear probe reads each "
                         "caption token from its own last hidden state)")
    vae = f"64 px ↔ 16×16×4 latents, scaling factor {stages['vae']['scaling_factor']:.4f}"
    if window < IMAGE_SIZE:
        vae += f"; trained on {window} px windows that each hold a shape"
    reliance = " · ".join(f"{name} {r['text_change']:.2f} / {r['unet_error_increase']:+.0%}"
                          for name, r in card.get("attribute_reliance", {}).items())
    return f"""# ShapesWorld base model

A miniature Stable Diffusion (SD v1.5's layout and classes) trained on ShapesWorld by
`python -m textcraftor.shapes.pretrain --out DIR --seed {config['seed']}` in
{card['minutes']} minutes on {config['threads']} CPU threads. Load it as the `shapes` preset.

- **Data**: {card['data']}; captions from varied templates (`textcraftor.shapes.world`).
- **Text encoder**: the text tower of a small CLIP (width {WIDTH}, 3 layers) trained
  contrastively{word_identity}; the whole CLIP is in `clip/` (CLIP-similarity reward).
- **VAE**: {vae}.
- **UNet**: ε-prediction on SD v1.5's scaled-linear schedule with offset noise
  {config['offset_noise']}, min-SNR-{MIN_SNR_GAMMA:g} timestep weights,
  {1 + UNET_SHAPE_WEIGHT:g}× weight on the shapes' latent cells,
  {config['caption_dropout']:.0%} empty captions.
- **Aesthetic head** (`aesthetic/`): LAION's MLP layout on the CLIP's unit-norm image
  embedding, fitted to {card['quality_score']}; held-out Pearson r
  {aesthetic['heldout_pearson']:.3f}, mean absolute error {aesthetic['heldout_mae']:.3f}.
- **Weights**: fp16 safetensors; `checksums.json` holds their SHA-256.

| stage | steps | seconds | first loss | last loss |
|---|---|---|---|---|
{rows}

**Oracle accuracy** of the base model on {config['eval_prompts']} single-shape prompts
(every attribute named), {config['eval_steps']} DDIM steps, guidance 5: {oracle}.

The VAE's own reconstructions of {config['eval_prompts']} single-shape renders — a ceiling for
the UNet — score {ceiling}.

**Attribute reliance** (`python -m textcraftor.shapes.reliance DIR`): swapping one attribute's
word in a full caption moves the text encoder's hidden states by (‖ΔH‖ / ‖H‖) / raises the
UNet's ε-error on the shape's latent cells by: {reliance or "not measured"}.

![samples](samples.png) — prompts in `samples.txt`, row by row.
"""


DOCUMENTS = ("README.md", "card.json", "checksums.json", "samples.png", "samples.txt")


def write_checksums(out: Path) -> None:
    """SHA-256 of every file the loaders read (weights, configs, tokenizer)."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in DOCUMENTS)
    checksums = {str(p.relative_to(out)): sha256(p) for p in files}
    (out / "checksums.json").write_text(json.dumps(checksums, indent=2) + "\n")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def oracle_accuracy(pipeline: Pipeline, count: int, steps: int, seed: int,
                    guidance_scale: float = 5.0, grid: Path | None = None) -> dict[str, float]:
    """The model on ``count`` single-shape prompts (every attribute named), ``steps`` DDIM
    steps: the oracle's per-attribute accuracy; the sample grid goes to ``grid``."""

    from torchvision.utils import save_image

    from textcraftor.config import SampleConfig
    from textcraftor.generation import sample_images
    from textcraftor.shapes.oracle import batch_alignment
    from textcraftor.shapes.world import describe

    prompts = [describe(scene) for scene in single_shape_scenes(count, seed + 1)]
    sample = SampleConfig(resolution=IMAGE_SIZE, num_steps=steps, guidance_scale=guidance_scale,
                          k=1)
    tokens = PromptTokenizer(pipeline.tokenizer)
    images = torch.cat([
        sample_images(pipeline, pipeline.text_encoder, tokens, prompts[i:i + 16],
                      list(range(i, min(i + 16, count))), sample, alpha=0.0)
        for i in range(0, count, 16)])
    if grid is not None:
        save_image(images[:64], grid, nrow=8)
        (grid.parent / "samples.txt").write_text("\n".join(prompts[:64]) + "\n")
    scores = batch_alignment(images, prompts)
    return {k: round(v, 4) for k, v in scores.items()}


@torch.no_grad()
def reconstruction_accuracy(vae: AutoencoderKL, count: int, seed: int) -> dict[str, float]:
    """The oracle's per-attribute accuracy on the VAE's reconstructions (decoded posterior
    means) of ``count`` single-shape renders: what a perfect UNet could reach."""
    from torchvision.transforms.functional import pil_to_tensor

    from textcraftor.shapes.oracle import batch_alignment
    from textcraftor.shapes.world import describe, render

    scenes = single_shape_scenes(count, seed + 2)
    images = torch.stack([pil_to_tensor(render(scene)) for scene in scenes]).float() / 255.0
    decoded = vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample
    scores = batch_alignment(((decoded + 1) / 2).clamp(0, 1), [describe(s) for s in scenes])
    return {k: round(v, 4) for k, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m textcraftor.shapes.pretrain",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    for name, spec in PretrainConfig.__dataclass_fields__.items():
        if name != "out":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(spec.default),
                                default=spec.default)
    try:
        config = PretrainConfig(**vars(parser.parse_args(argv)))
    except ValueError as error:
        parser.error(str(error))
    pretrain(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
