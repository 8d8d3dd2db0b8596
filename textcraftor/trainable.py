"""What a run trains and at which precision: the optimizer over the text encoder and/or the
UNet (full or a peft LoRA), their saved weights, autocast, and diffusers' VAE checkpointing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from textcraftor.config import ModelConfig, TrainConfig
from textcraftor.events import NonFiniteLossError
from textcraftor.lora import (
    TEXT_ENCODER_LORA,
    UNET_LORA,
    UNET_LORA_TARGETS,
    adapter_state,
    adapter_writer,
    attach_text_encoder_lora,
    load_adapter_state,
)
from textcraftor.models import Pipeline
from textcraftor.replicas import Replicas, mean_over_ranks

NamedParameters = list[tuple[str, torch.nn.Parameter]]


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """``model.mixed_precision`` → the autocast dtype (None: fp32); auto is bf16 on CUDA."""
    if mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on ``device``'s type; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def set_vae_checkpointing(vae: torch.nn.Module, enabled: bool) -> None:
    """Gradient checkpointing in the VAE decoder on or off (diffusers' own, on its mid and up
    blocks; it acts only while gradients are recorded). Set either way: a pipeline may be shared
    between runs with different settings."""
    if enabled:
        vae.enable_gradient_checkpointing()
    else:
        vae.disable_gradient_checkpointing()


def make_unet_trainable(pipeline: Pipeline, mode: str, lora_rank: int) -> list[torch.nn.Parameter]:
    """Unfreeze the UNet (``full``) or attach a peft LoRA to its attention (``lora``)."""
    unet = pipeline.unet
    if mode == "full":
        unet.requires_grad_(True)
    elif mode == "lora":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                    target_modules=list(UNET_LORA_TARGETS)))
    return [p for p in unet.parameters() if p.requires_grad]


def build_optimizer(pipeline: Pipeline, model: ModelConfig, train: TrainConfig
                    ) -> tuple[torch.optim.Optimizer, NamedParameters]:
    """AdamW over everything that trains (text encoder, or its LoRA when
    ``model.text_encoder_lora.rank`` > 0, at ``train.lr``; UNet or its LoRA at
    ``model.unet_lr``; fused where the device supports it); returns it with the (name,
    parameter) pairs, in the same order on every rank. A LoRA is attached here, to
    ``pipeline.text_encoder`` only (``original_text_encoder`` is a separate copy)."""
    encoder = pipeline.text_encoder
    encoder.requires_grad_(model.train_text_encoder)
    named: NamedParameters = []
    groups = []
    if model.train_text_encoder:
        if model.text_encoder_lora.rank:
            attach_text_encoder_lora(encoder, model.text_encoder_lora)
        named += [(f"text_encoder.{n}", p) for n, p in encoder.named_parameters()
                  if p.requires_grad]
        groups.append({"params": [p for _, p in named], "lr": train.lr})
    if model.train_unet != "none":
        make_unet_trainable(pipeline, model.train_unet, model.lora_rank)
        unet = [(f"unet.{n}", p) for n, p in pipeline.unet.named_parameters() if p.requires_grad]
        named += unet
        groups.append({"params": [p for _, p in unet], "lr": model.unet_lr})
    try:
        optimizer = torch.optim.AdamW(groups, weight_decay=train.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(groups, weight_decay=train.weight_decay)
    return optimizer, named


def trained_weights(pipeline: Pipeline, model: ModelConfig) -> dict[str, dict[str, torch.Tensor]]:
    """What a checkpoint keeps: the text encoder's weights (or its LoRA's, under
    ``text_encoder_lora``) when it trains, the UNet's (or its LoRA's) when it does."""
    weights = unet_weights(pipeline, model.train_unet)
    if model.train_text_encoder and model.text_encoder_lora.rank:
        weights[TEXT_ENCODER_LORA] = adapter_state(pipeline.text_encoder)
    elif model.train_text_encoder:
        weights["text_encoder"] = pipeline.text_encoder.state_dict()
    return weights


def adapter_folders(pipeline: Pipeline, model: ModelConfig) -> dict[str, Callable[[Path], None]]:
    """The LoRAs a checkpoint also keeps in peft's on-disk format: folder name → writer
    (``lora.adapter_writer``)."""
    folders = {}
    if model.train_text_encoder and model.text_encoder_lora.rank:
        folders[TEXT_ENCODER_LORA] = adapter_writer(pipeline.text_encoder, model.source)
    if model.train_unet == "lora":
        folders[UNET_LORA] = adapter_writer(pipeline.unet, model.source)
    return folders


def load_trained_weights(pipeline: Pipeline,
                         weights: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Put ``trained_weights``' output back (a LoRA must be attached first)."""
    if "text_encoder" in weights:
        pipeline.text_encoder.load_state_dict(weights["text_encoder"])
    if TEXT_ENCODER_LORA in weights:
        load_adapter_state(pipeline.text_encoder, weights[TEXT_ENCODER_LORA])
    load_unet_weights(pipeline, weights)


def unet_weights(pipeline: Pipeline, mode: str) -> dict[str, dict[str, torch.Tensor]]:
    """The trained UNet weights a checkpoint keeps: all (``full``), the LoRA's, or none."""
    if mode == "full":
        return {"unet": pipeline.unet.state_dict()}
    if mode == "lora":
        from peft.utils import get_peft_model_state_dict

        return {"unet_lora": get_peft_model_state_dict(pipeline.unet)}
    return {}


def load_unet_weights(pipeline: Pipeline, weights: Mapping[str, Mapping[str, torch.Tensor]]):
    """Put ``unet_weights``' output back (a LoRA must be attached first)."""
    if "unet" in weights:
        pipeline.unet.load_state_dict(weights["unet"])
    if "unet_lora" in weights:
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(pipeline.unet, weights["unet_lora"])


def apply_update(step: int, sums: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, replicas: Replicas, max_grad_norm: float,
                 last_checkpoint: object) -> dict[str, float]:
    """One optimizer step after the micro-batches' backward passes: gradients averaged over the
    ranks, unscaled, clipped (``max_grad_norm``; 0 = off), the update, the scaler's update.
    Returns ``sums`` (loss, scores) and grad_norm averaged over the ranks, plus
    amp/loss_scale and amp/skipped_step under fp16.

    A non-finite loss (before scaling) is a divergence: NonFiniteLossError naming ``step`` and
    ``last_checkpoint``, before the update. A non-finite gradient is one too without fp16 loss
    scaling; with it, it is an overflow the scaler skips (its inf check ran in ``unscale_``, on
    the averaged gradients, so every rank skips together)."""
    # one all-reduce per optimizer step, before unscaling and clipping: the clip coefficient,
    # the non-finite check and the update are computed from the same numbers on every rank
    replicas.average_gradients()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(replicas.parameters,
                                               max_grad_norm or float("inf"))
    values = mean_over_ranks(torch.stack([*sums.values(), grad_norm.float()]))
    metrics = dict(zip([*sums, "grad_norm"], values))
    scaling = scaler.is_enabled()
    if not _finite(metrics["loss"]) or (not scaling and not _finite(metrics["grad_norm"])):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"non-finite loss ({metrics['loss']}) or grad norm ({metrics['grad_norm']}) at step "
            f"{step}; stopped before the update. Last good checkpoint: {last_checkpoint or 'none'}")
    scale = scaler.get_scale() if scaling else 1.0
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scaling:  # the scale falls only after an overflow, and then the step was skipped
        metrics["amp/loss_scale"] = scale
        metrics["amp/skipped_step"] = float(scaler.get_scale() < scale)
    return metrics


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
