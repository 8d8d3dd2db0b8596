"""peft LoRA adapters of the text encoder and the UNet: attached for training, kept in a
checkpoint in peft's own on-disk format, and merged into the weights (with a scale) at
generation — the TexForce combination of a text-encoder LoRA and a separately trained UNet LoRA.

Adapters are injected in place (``peft.inject_adapter_in_model``), so ``pipeline.text_encoder``
stays a ``CLIPTextModel``; a checkpoint keeps their state dicts (``peft.utils.
get_peft_model_state_dict``: keys without the adapter name) and, beside them, one folder per
adapter that ``peft.PeftModel.from_pretrained(base_model, folder)`` loads
(``adapter_config.json`` + ``adapter_model.safetensors``, keys under ``base_model.model.``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from textcraftor.config import ModelConfig, TextEncoderLoraConfig
from textcraftor.configio import ConfigError

TEXT_ENCODER_LORA = "text_encoder_lora"  # checkpoint key and adapter folder of the encoder's
UNET_LORA = "unet_lora"  # ... and of the UNet's
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers' attention projections
ADAPTER_CONFIG = "adapter_config.json"  # peft's file names (PeftModel.save_pretrained)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # a PeftModel's key prefix, as peft saves it
# module types peft's LoRA wraps (a target naming anything else is refused)
LORA_MODULE_TYPES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)


def text_encoder_lora_config(lora: TextEncoderLoraConfig):
    """The peft ``LoraConfig`` of ``model.text_encoder_lora`` (B = 0 at the start: the adapted
    encoder begins as the base one)."""
    from peft import LoraConfig

    return LoraConfig(r=lora.rank, lora_alpha=lora.lora_alpha(), target_modules=list(lora.targets),
                      init_lora_weights=True)


def unet_lora_config(rank: int):
    """The peft ``LoraConfig`` of ``model.train_unet: lora`` (rank ``model.lora_rank``)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                      target_modules=list(UNET_LORA_TARGETS))


def attach_text_encoder_lora(encoder: torch.nn.Module, lora: TextEncoderLoraConfig
                             ) -> list[torch.nn.Parameter]:
    """Inject the LoRA into ``encoder`` in place; only its A and B matrices keep
    ``requires_grad`` (peft freezes the rest). Returns them. Raises ConfigError naming the
    targets that match no module (``check_targets``) before anything is injected."""
    from peft import inject_adapter_in_model

    check_targets(lora.targets, encoder.named_modules())
    inject_adapter_in_model(text_encoder_lora_config(lora), encoder)
    return [p for p in encoder.parameters() if p.requires_grad]


def check_targets(targets: Iterable[str], modules: Iterable[tuple[str, torch.nn.Module]],
                  field: str = "model.text_encoder_lora.targets") -> None:
    """Raise ConfigError naming every target that matches no module peft's LoRA can wrap
    (``LORA_MODULE_TYPES``), by peft's rule for a list: the module's name is the target or ends
    with ``.target``."""
    modules = list(modules)
    missing = []
    for target in targets:
        matched = [m for name, m in modules if name == target or name.endswith("." + target)]
        if not any(isinstance(m, LORA_MODULE_TYPES) for m in matched):
            kinds = sorted({type(m).__name__ for m in matched})
            missing.append(f"{target!r}" + (f" (matches only {', '.join(kinds)})" if kinds else ""))
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in modules
                         if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"{field}: {', '.join(missing)} match(es) no linear, embedding or "
                          f"convolution layer of the text encoder; its linear layers end in "
                          f"{', '.join(linear)}")


def check_text_encoder_targets(model: ModelConfig, encoder: torch.nn.Module | None = None) -> None:
    """``check_targets`` for ``model.text_encoder_lora`` (nothing when rank is 0), on
    ``encoder`` when one is loaded, else on a CLIPTextModel built on the meta device from the
    text encoder's config (no weights load). Raises FileNotFoundError when that config cannot
    be read."""
    lora = model.text_encoder_lora
    if lora.rank == 0:
        return
    if encoder is None:
        from transformers import CLIPTextModel

        with torch.device("meta"):
            encoder = CLIPTextModel(text_encoder_config(model))
    check_targets(lora.targets, encoder.named_modules())


def text_encoder_config(model: ModelConfig):
    """The ``CLIPTextConfig`` of ``model.source`` (a preset's, or its ``text_encoder`` folder's
    config.json)."""
    from transformers import CLIPTextConfig

    from textcraftor import models

    if model.source == "sd15-random":
        return models.sd15_text_encoder_config()
    where = models.resolve_source(model.source, model.cache_dir)
    kwargs = {"revision": model.revision} if model.revision else {}
    try:
        return CLIPTextConfig.from_pretrained(where, subfolder="text_encoder", **kwargs)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"model.source {model.source!r}: could not read the text "
                                f"encoder's config: {error}") from error


def adapter_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of a module with an injected LoRA (peft's keys, no adapter name)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(module)


def load_adapter_state(module: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Put ``adapter_state``' output back into a module with the same LoRA injected."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(module, dict(weights))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"adapter weights that fit no LoRA layer: {unexpected[:3]}")


def adapter_writer(module: torch.nn.Module, base_model: str | None = None
                   ) -> Callable[[Path], None]:
    """A function that writes ``module``'s LoRA into a new folder in peft's format (what
    ``PeftModel.save_pretrained`` writes), its weights copied now: a checkpoint calls it inside
    its staging folder, so the adapter appears with the rest of the checkpoint, atomically."""
    from safetensors.torch import save_file

    config = copy.copy(module.peft_config["default"])
    config.base_model_name_or_path = base_model
    weights = {PEFT_PREFIX + k: v.detach().contiguous().cpu()
               for k, v in adapter_state(module).items()}

    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(folder))
        save_file(weights, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})

    return write


def read_adapter_folder(folder: str | Path):
    """(peft ``LoraConfig``, weights with ``adapter_state``' keys) of an adapter folder."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    folder = Path(folder)
    config = LoraConfig.from_pretrained(str(folder))
    weights = {k.removeprefix(PEFT_PREFIX): v
               for k, v in load_file(folder / ADAPTER_WEIGHTS).items()}
    return config, weights


def merge_adapter(module: torch.nn.Module, config, weights: Mapping[str, torch.Tensor],
                  scale: float = 1.0) -> torch.nn.Module:
    """``module`` with a LoRA merged into its weights: W ← W + scale·(alpha/r)·B·A on every
    target layer (scale 0 leaves W exactly). Built with peft's public API: ``get_peft_model``,
    ``set_peft_model_state_dict``, each ``LoraLayer.scale_layer(scale)``, then
    ``merge_and_unload`` (which returns the plain module, no LoRA layers left). ``module``
    itself is changed; use the returned one."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import set_peft_model_state_dict

    config = copy.deepcopy(config)
    config.base_model_name_or_path = getattr(module, "name_or_path", None)  # (peft warns else)
    wrapped = get_peft_model(module, config)
    result = set_peft_model_state_dict(wrapped, {PEFT_PREFIX + k: v for k, v in weights.items()})
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"adapter weights that fit no LoRA layer: {unexpected[:3]}")
    for layer in wrapped.modules():
        if isinstance(layer, LoraLayer):
            layer.scale_layer(scale)
    return wrapped.merge_and_unload()
