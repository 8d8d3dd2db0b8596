"""Model loading: the tiny preset on disk, SD v1.5's sizes without a download, the CLIP
tokenizer's real ids, and loud failures for bad sources."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from textcraftor.models import (
    build_sd15_random,
    build_tiny_preset,
    count_parameters,
    load_pipeline,
    resolve_source,
)
from textcraftor.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

START, END = 49406, 49407


def test_tiny_preset_is_a_diffusers_folder(tiny_source, cache_dir):
    assert tiny_source.parent == cache_dir  # built in TEXTCRAFTOR_CACHE
    index = json.loads((tiny_source / "model_index.json").read_text())
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index
        assert (tiny_source / part).is_dir()
    assert (tiny_source / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_source / "text_encoder" / "model.safetensors").is_file()
    assert (tiny_source / "tokenizer" / "vocab.json").is_file()
    # built in a staging folder and renamed: nothing half-written is left next to it
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]


def test_tiny_preset_is_built_once(tiny_source):
    weights = tiny_source / "unet" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_tiny_preset(tiny_source) == tiny_source
    assert resolve_source("tiny") == str(tiny_source)
    assert weights.stat().st_mtime_ns == stamp


def test_tiny_preset_is_deterministic(tiny_source, tmp_path):
    other = build_tiny_preset(tmp_path / "again", seed=0)
    for part, name in [("unet", "diffusion_pytorch_model.safetensors"),
                       ("text_encoder", "model.safetensors")]:
        mine, theirs = load_file(tiny_source / part / name), load_file(other / part / name)
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    reseeded = load_file(build_tiny_preset(tmp_path / "seed1", seed=1)
                         / "text_encoder" / "model.safetensors")
    assert not all(torch.equal(mine[k], reseeded[k]) for k in mine)


def test_loaded_pipeline_freezes_all_but_the_text_encoder(pipeline, tiny_source):
    assert isinstance(pipeline.tokenizer, CLIPTokenizer)
    assert isinstance(pipeline.text_encoder, CLIPTextModel)
    assert isinstance(pipeline.unet, UNet2DConditionModel)
    assert isinstance(pipeline.vae, AutoencoderKL)
    assert isinstance(pipeline.scheduler, DDIMScheduler)
    assert pipeline.source == "tiny"
    assert all(p.requires_grad for p in pipeline.text_encoder.parameters())
    assert pipeline.text_encoder.training
    for frozen in (pipeline.original_text_encoder, pipeline.unet, pipeline.vae):
        assert not any(p.requires_grad for p in frozen.parameters())
        assert not frozen.training
    # the original is a separate copy with the same weights as loaded from disk
    assert pipeline.original_text_encoder is not pipeline.text_encoder
    on_disk = load_file(tiny_source / "text_encoder" / "model.safetensors")
    for name, tensor in pipeline.original_text_encoder.state_dict().items():
        assert tensor.data_ptr() != pipeline.text_encoder.state_dict()[name].data_ptr()
        assert torch.equal(tensor, pipeline.text_encoder.state_dict()[name])
        if name in on_disk:
            assert torch.equal(tensor, on_disk[name])


def test_sd15_random_has_sd15_parameter_counts(tmp_path):
    pipeline = build_sd15_random("meta", tokenizer_folder=tmp_path / "tokenizer")
    assert count_parameters(pipeline.unet) == 859_520_964
    assert count_parameters(pipeline.text_encoder) == 123_060_480
    assert count_parameters(pipeline.original_text_encoder) == 123_060_480
    assert count_parameters(pipeline.vae) == 83_653_863
    assert pipeline.unet.device.type == "meta"  # nothing was allocated
    assert pipeline.tokenizer.model_max_length == 77
    assert (tmp_path / "tokenizer" / "vocab.json").is_file()


def test_missing_model_path_fails_loudly(tmp_path):
    with pytest.raises(FileNotFoundError, match="'/nonexistent'"):
        load_pipeline("/nonexistent")
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a preset"):
        resolve_source("no-such-preset")
    # a hub id passes through untouched (loading it is from_pretrained's job)
    assert resolve_source("stable-diffusion-v1-5/stable-diffusion-v1-5") == \
        "stable-diffusion-v1-5/stable-diffusion-v1-5"


PROMPTS = [
    "a photo of a cat",
    "Hello, World!! 123",
    "An astronaut riding a horse on Mars, 4k, trending on ArtStation",
    "café déjà vu — naïve",
    "don't stop: it's 3.5x faster",
    " ".join(["word"] * 100),  # longer than 77 tokens: truncated, the end token kept
]


def test_clip_tokenizer_gives_the_real_clip_ids(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path / "tokenizer")
    assert len(tokenizer) == CLIP_VOCAB_SIZE
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == \
        (START, END, END)
    ours = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids
    reference = open_clip.get_tokenizer("ViT-L-14")(PROMPTS)  # pads with 0, not with END
    assert ours.shape == reference.shape == (len(PROMPTS), 77)
    for mine, theirs in zip(ours, reference):
        n = int((theirs != 0).sum())
        assert torch.equal(mine[:n], theirs[:n])
        assert mine[0] == START and mine[n - 1] == END
        assert (mine[n:] == END).all()  # SD pads with the end token
    assert ours[0, :7].tolist() == [START, 320, 1125, 539, 320, 2368, END]
