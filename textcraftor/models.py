"""The one place that loads Stable Diffusion weights: presets, hub ids and local folders.

Every source ends up in the same ``from_pretrained`` calls: the ``tiny`` preset is built from
configs with the real classes, written in the ``save_pretrained`` layout and loaded back from
disk; only ``sd15-random`` (multi-GB) is built in memory.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from textcraftor.shapes_weights import is_shapes_preset, shapes_folder
from textcraftor.sources_check import model_source_problem
from textcraftor.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer
from textcraftor.transformers_files import save_transformers_model

log = logging.getLogger(__name__)

PRESET_VERSION = "v2"  # bump when a preset's architecture, seed or layout changes
# v1 could be written without weights from a DDP worker of rank > 0 (see save_transformers_model)
_PRESET_FILES = ("text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json",
                 "scheduler/scheduler_config.json")



@dataclass
class Pipeline:
    """The pieces of an SD pipeline TextCraftor needs, plus a frozen copy of the text encoder."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel  # trainable
    original_text_encoder: CLIPTextModel  # frozen copy of the encoder as loaded
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDIMScheduler
    source: str  # what it was loaded from

    def to(self, device: torch.device | str) -> Pipeline:
        for module in (self.text_encoder, self.original_text_encoder, self.unet, self.vae):
            module.to(device)
        return self


def default_cache_dir() -> Path:
    return Path(os.environ.get("TEXTCRAFTOR_CACHE", Path.home() / ".cache" / "textcraftor"))


# --- architectures -------------------------------------------------------------------------


def sd15_text_encoder_config() -> CLIPTextConfig:
    """OpenAI CLIP ViT-L/14's text tower, as in SD v1.5 (123,060,480 parameters)."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=768, intermediate_size=3072,
        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
        hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=1,
    )


def sd15_unet_config() -> dict:
    """SD v1.5's UNet (859,520,964 parameters)."""
    return dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


def sd15_vae_config() -> dict:
    """SD v1.5's VAE (83,653,863 parameters; 8× down-sampling, 4 latent channels)."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215,
    )


def sd15_scheduler() -> DDIMScheduler:
    """SD v1.5's noise schedule as a DDIM scheduler (eta is chosen per step call)."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )


def tiny_text_encoder_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )


def tiny_unet_config() -> dict:
    return dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )


def tiny_vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8, sample_size=128,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215,
    )


# --- presets -------------------------------------------------------------------------------


def build_tiny_preset(folder: str | Path | None = None, seed: int = 0) -> Path:
    """Write the ``tiny`` pipeline (random weights, real classes) as a diffusers folder.

    Idempotent: an existing complete folder is reused. Built in a temporary folder and renamed,
    so concurrent builders (several Ray workers) never see half-written weights.
    """
    folder = Path(folder) if folder else default_cache_dir() / f"tiny-{PRESET_VERSION}-{seed}"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        torch.manual_seed(seed)
        save_transformers_model(CLIPTextModel(tiny_text_encoder_config()), staging / "text_encoder")
        UNet2DConditionModel(**tiny_unet_config()).save_pretrained(staging / "unet")
        AutoencoderKL(**tiny_vae_config()).save_pretrained(staging / "vae")
        sd15_scheduler().save_pretrained(staging / "scheduler")
        build_clip_tokenizer(staging / "tokenizer")
        missing = [f for f in _PRESET_FILES if not (staging / f).is_file()]
        if missing:
            raise RuntimeError(f"building the tiny preset wrote no {', '.join(missing)}")
        write_model_index(staging)  # last: its presence marks a complete preset
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished first
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built tiny preset at %s", folder)
    return folder


def write_model_index(folder: Path) -> None:
    import json

    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def build_sd15_random(
    device: torch.device | str = "cpu", tokenizer_folder: str | Path | None = None, seed: int = 0
) -> Pipeline:
    """SD v1.5's exact architecture with random weights (no download). ``device="meta"`` builds
    the modules without allocating their weights (for counting parameters)."""
    torch.manual_seed(seed)
    with torch.device(device):
        text_encoder = CLIPTextModel(sd15_text_encoder_config())
        unet = UNet2DConditionModel(**sd15_unet_config())
        vae = AutoencoderKL(**sd15_vae_config())
    tokenizer_folder = tokenizer_folder or default_cache_dir() / "clip-tokenizer"
    return _assemble(
        build_clip_tokenizer(tokenizer_folder), text_encoder, unet, vae, sd15_scheduler(),
        "sd15-random",
    )


# --- loading -------------------------------------------------------------------------------


def resolve_source(source: str, cache_dir: str | Path | None = None) -> str:
    """A local folder or hub id for ``source``; builds the tiny preset when asked.

    Raises FileNotFoundError for a path that does not exist (anything that is not a hub id),
    DamagedWeightsError for a missing or damaged ``shapes`` weight file.
    """
    if source == "tiny":
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        return str(build_tiny_preset(cache / f"tiny-{PRESET_VERSION}-0"))
    if is_shapes_preset(source):
        return str(shapes_folder(source))
    problem = model_source_problem(source)
    if problem is not None:
        raise FileNotFoundError(f"model.source {source!r}: {problem}")
    path = Path(source).expanduser()
    return str(path) if path.exists() else source


def load_text_encoder(source: str, cache_dir: str | Path | None = None,
                      revision: str | None = None) -> CLIPTextModel:
    """The text encoder of ``source`` alone, fp32 on the CPU, frozen: the base weights a run of
    that source trained a text-encoder LoRA on. ``sd15-random``: the weights its pipeline draws
    (seed 0, the first module built; the global RNG is left as it was). Raises
    FileNotFoundError as ``load_pipeline``."""
    if source == "sd15-random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            encoder = CLIPTextModel(sd15_text_encoder_config())
        return encoder.requires_grad_(False).eval()
    kwargs = {"revision": revision} if revision else {}
    try:
        encoder = CLIPTextModel.from_pretrained(resolve_source(source, cache_dir),
                                                subfolder="text_encoder", dtype=torch.float32,
                                                **kwargs)
    except OSError as error:
        raise FileNotFoundError(
            f"could not load the text encoder of {source!r}: {error}") from error
    return encoder.requires_grad_(False).eval()


def load_tokenizer(source: str, cache_dir: str | Path | None = None,
                   revision: str | None = None) -> CLIPTokenizer | None:
    """The tokenizer of ``source`` alone (no weights load); None for ``sd15-random``, whose
    tokenizer is built with its pipeline. Raises FileNotFoundError as ``load_pipeline``."""
    if source == "sd15-random":
        return None
    kwargs = {"revision": revision} if revision else {}
    try:
        return CLIPTokenizer.from_pretrained(resolve_source(source, cache_dir),
                                             subfolder="tokenizer", **kwargs)
    except OSError as error:
        raise FileNotFoundError(f"could not load the tokenizer of {source!r}: {error}") from error


def load_pipeline(
    source: str, cache_dir: str | Path | None = None, revision: str | None = None,
    device: torch.device | str = "cpu",
) -> Pipeline:
    """Load tokenizer, text encoder (trainable + frozen copy), UNet, VAE and a DDIM scheduler,
    on ``device``.

    UNet, VAE and the copy are frozen (``requires_grad=False``, eval mode). Weights are loaded
    in fp32 whatever their stored dtype (the shapes preset stores fp16); mixed precision is
    applied with autocast by the caller. ``sd15-random`` is built directly on ``device`` (its
    1.07 B parameters never initialise on a CPU first).
    """
    if source == "sd15-random":
        return build_sd15_random(device, tokenizer_folder=Path(cache_dir or default_cache_dir())
                                 / "clip-tokenizer")
    where = resolve_source(source, cache_dir)
    kwargs = {"revision": revision} if revision else {}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder",
                                                     dtype=torch.float32, **kwargs)
        unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet",
                                                    torch_dtype=torch.float32, **kwargs)
        vae = AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=torch.float32,
                                            **kwargs)
        scheduler = DDIMScheduler.from_pretrained(where, subfolder="scheduler", **kwargs)
    except OSError as error:
        raise FileNotFoundError(
            f"could not load a diffusers pipeline from {source!r}: {error}") from error
    return _assemble(tokenizer, text_encoder, unet, vae, scheduler, source).to(device)


def _assemble(tokenizer, text_encoder, unet, vae, scheduler, source) -> Pipeline:
    original = copy.deepcopy(text_encoder)
    for frozen in (original, unet, vae):
        frozen.requires_grad_(False).eval()
    text_encoder.train()
    return Pipeline(tokenizer, text_encoder, original, unet, vae, scheduler, source)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
