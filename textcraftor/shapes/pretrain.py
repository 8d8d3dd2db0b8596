"""``python -m textcraftor.shapes.pretrain --out DIR``: the ShapesWorld base model, trained here.

Three stages on ShapesWorld image–caption pairs, each within a time (and step) budget:

1. a small CLIP (``CLIPModel``: text and vision towers) trained contrastively;
2. a small VAE (``AutoencoderKL``): 64 px images ↔ 16×16×4 latents;
3. a small UNet (``UNet2DConditionModel``) on the VAE's latents, conditioned on the frozen CLIP
   text encoder's hidden states: ε-prediction on SD v1.5's scaled-linear schedule, 10 % empty
   captions so classifier-free guidance works.

The output is SD's on-disk layout (``model_index.json``, tokenizer, text_encoder, unet, vae,
scheduler — loadable by ``textcraftor.models.load_pipeline``), the whole CLIP in ``clip/`` for
the rewards, and ``card.json`` (data, steps, losses, oracle accuracy of the base model).
"""

from __future__ import annotations

import argparse
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
from transformers import CLIPConfig, CLIPModel, CLIPTextModel

from textcraftor.models import (
    CLIP_VOCAB_SIZE,
    save_transformers_model,
    sd15_scheduler,
    write_model_index,
)
from textcraftor.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from textcraftor.sampler import PromptTokenizer
from textcraftor.shapes.world import ShapesDataset
from textcraftor.tokenizer import build_clip_tokenizer

log = logging.getLogger("textcraftor.shapes.pretrain")
IMAGE_SIZE = 64
WIDTH = 64  # CLIP width = the UNet's cross-attention width


@dataclass(frozen=True)
class PretrainConfig:
    out: str  # output folder (a diffusers pipeline folder + clip/ + card.json)
    seed: int = 0  # data, initialisation and noise
    clip_minutes: float = 10.0  # time budget of each stage …
    vae_minutes: float = 10.0
    unet_minutes: float = 35.0
    clip_max_steps: int = 100_000  # … and a step budget (tests use a few steps)
    vae_max_steps: int = 100_000
    unet_max_steps: int = 100_000
    batch_size: int = 64  # image–caption pairs per step
    lr: float = 1e-3  # AdamW learning rate of every stage
    caption_dropout: float = 0.1  # UNet stage: share of empty captions (for guidance)
    eval_prompts: int = 64  # single-shape prompts for the base model's oracle accuracy
    eval_steps: int = 25  # DDIM steps at that evaluation
    threads: int = 2  # torch intra-op threads


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
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(32, 64, 64), norm_num_groups=16, sample_size=IMAGE_SIZE,
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3)


def unet_config() -> dict:
    return dict(sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(64, 128), cross_attention_dim=WIDTH, attention_head_dim=8,
                norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def batches(dataset: ShapesDataset, batch_size: int, start: int = 0
            ) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(images [B,3,64,64] float in [0,1], captions), endlessly, from item ``start`` on."""
    index = start
    while True:
        images, captions, _ = dataset.batch(index, batch_size)
        index += batch_size
        yield images.float() / 255.0, captions


def budgeted(minutes: float, max_steps: int, step: Callable[[int], float], name: str
             ) -> dict[str, float]:
    """Call ``step(i)`` (returns the loss) until the time or step budget runs out."""
    deadline = time.monotonic() + 60.0 * minutes
    started, losses, i = time.monotonic(), [], 0
    while i < max_steps and time.monotonic() < deadline:
        losses.append(step(i))
        i += 1
        if i % 50 == 0:
            log.info("%s step %d: loss %.4f", name, i, sum(losses[-50:]) / len(losses[-50:]))
    tail = losses[-50:] or [math.nan]
    return {"steps": i, "seconds": round(time.monotonic() - started, 1),
            "first_loss": losses[0] if losses else math.nan, "last_loss": sum(tail) / len(tail)}


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def train_clip(config: PretrainConfig, tokens: PromptTokenizer, data) -> tuple[CLIPModel, dict]:
    model = CLIPModel(clip_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)

    def step(_: int) -> float:
        images, captions = next(data)
        out = model(input_ids=tokens(captions), pixel_values=clip_pixels(images),
                    return_loss=True)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return out.loss.item()

    stats = budgeted(config.clip_minutes, config.clip_max_steps, step, "clip")
    return model.eval().requires_grad_(False), stats


def train_vae(config: PretrainConfig, data) -> tuple[AutoencoderKL, dict]:
    vae = AutoencoderKL(**vae_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr)

    def step(_: int) -> float:
        images, _ = next(data)
        x = images * 2 - 1
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    stats = budgeted(config.vae_minutes, config.vae_max_steps, step, "vae")
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # SD's convention: scaled latents have unit variance
        images, _ = next(data)
        spread = vae.encode(images * 2 - 1).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / max(spread, 1e-3))
    stats["scaling_factor"] = vae.config.scaling_factor
    return vae, stats


def train_unet(config: PretrainConfig, tokens: PromptTokenizer, text_encoder: CLIPTextModel,
               vae: AutoencoderKL, data) -> tuple[UNet2DConditionModel, dict]:
    unet = UNet2DConditionModel(**unet_config())
    noise_schedule = DDPMScheduler.from_config(sd15_scheduler().config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr / 2)
    generator = torch.Generator().manual_seed(config.seed)
    empty = tokens([""])

    def step(_: int) -> float:
        images, captions = next(data)
        with torch.no_grad():
            latents = vae.encode(images * 2 - 1).latent_dist.sample(generator)
            latents = latents * vae.config.scaling_factor
            ids = tokens(captions)
            dropped = torch.rand(len(captions), generator=generator) < config.caption_dropout
            ids = torch.where(dropped[:, None], empty, ids)
            context = text_encoder(ids).last_hidden_state
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(captions),),
                          generator=generator)
        noisy = noise_schedule.add_noise(latents, noise, t)
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    stats = budgeted(config.unet_minutes, config.unet_max_steps, step, "unet")
    return unet.eval().requires_grad_(False), stats


def text_encoder_of(model: CLIPModel) -> CLIPTextModel:
    """The CLIP's text tower as SD's ``CLIPTextModel`` (same weights, same names)."""
    encoder = CLIPTextModel(model.config.text_config)
    encoder.load_state_dict(model.text_model.state_dict())
    return encoder.eval().requires_grad_(False)


def pretrain(config: PretrainConfig) -> Path:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(out / "tokenizer")
    tokens = PromptTokenizer(tokenizer)
    dataset = ShapesDataset(seed=config.seed, image_size=IMAGE_SIZE)
    # disjoint item ranges per stage: the stages see different samples of the world
    clip, clip_stats = train_clip(config, tokens, batches(dataset, config.batch_size, 0))
    vae, vae_stats = train_vae(config, batches(dataset, config.batch_size, 10**8))
    text_encoder = text_encoder_of(clip)
    unet, unet_stats = train_unet(config, tokens, text_encoder, vae,
                                  batches(dataset, config.batch_size, 2 * 10**8))
    save_transformers_model(clip, out / "clip")
    save_transformers_model(text_encoder, out / "text_encoder")
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    sd15_scheduler().save_pretrained(out / "scheduler")
    write_model_index(out)
    card = {"data": f"ShapesWorld seed {config.seed}, {IMAGE_SIZE} px, 1–2 shapes",
            "config": asdict(config),
            "stages": {"clip": clip_stats, "vae": vae_stats, "unet": unet_stats},
            "oracle": oracle_accuracy(out, config.eval_prompts, config.eval_steps,
                                      config.seed)}
    (out / "card.json").write_text(json.dumps(card, indent=2))
    log.info("wrote %s: %s", out, json.dumps(card["stages"]))
    return out


def oracle_accuracy(folder: Path, count: int, steps: int, seed: int,
                    guidance_scale: float = 5.0) -> dict[str, float]:
    """The base model on ``count`` single-shape prompts (every attribute named), ``steps`` DDIM
    steps: the oracle's per-attribute accuracy; the sample grid goes to ``samples.png``."""
    import random

    from torchvision.utils import save_image

    from textcraftor.config import SampleConfig
    from textcraftor.generation import sample_images
    from textcraftor.models import load_pipeline
    from textcraftor.shapes.oracle import batch_alignment
    from textcraftor.shapes.world import describe, sample_scene

    rng = random.Random(seed + 1)
    prompts = [describe(sample_scene(rng, max_shapes=1)) for _ in range(count)]
    pipeline = load_pipeline(str(folder))
    sample = SampleConfig(resolution=IMAGE_SIZE, num_steps=steps, guidance_scale=guidance_scale,
                          k=1)
    tokens = PromptTokenizer(pipeline.tokenizer)
    images = torch.cat([
        sample_images(pipeline, pipeline.text_encoder, tokens, prompts[i:i + 16],
                      list(range(i, min(i + 16, count))), sample, alpha=0.0)
        for i in range(0, count, 16)])
    save_image(images[:64], folder / "samples.png", nrow=8)
    (folder / "samples.txt").write_text("\n".join(prompts[:64]) + "\n")
    return batch_alignment(images, prompts)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m textcraftor.shapes.pretrain",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    for name in ("seed", "clip_minutes", "vae_minutes", "unet_minutes", "clip_max_steps",
                 "vae_max_steps", "unet_max_steps", "batch_size", "lr", "caption_dropout",
                 "eval_prompts", "eval_steps", "threads"):
        default = PretrainConfig.__dataclass_fields__[name].default
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    pretrain(PretrainConfig(**args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
