"""What the model refuses, checked from its JSON configs before any weight loads.

The dataclasses in ``textcraftor.config`` check what holds for every model (eta in [0, 1],
finite numbers, K ≤ T). What depends on the model is checked here, against the scheduler, UNet
and VAE configs of ``model.source`` (``scheduler/scheduler_config.json``, ``unet/config.json``,
``vae/config.json``; the preset's config functions for ``sd15-random``) — never the weights:

- ``sample.num_steps``: DDIM with T steps must give timesteps below the scheduler's training
  timesteps. SD's scheduler (1000 training timesteps, "leading" spacing, steps_offset 1) gives
  1, …, 1000 for T = 1000: index 1000 is out of bounds; diffusers itself refuses T > 1000.
- ``sample.direct_t_min/max`` (direct truncation): a training timestep, below that number.
- ``sample.resolution``: a multiple of the VAE's down-sampling factor
  2^(len(block_out_channels) − 1) (8 for SD, 4 for ShapesWorld); otherwise the VAE decodes
  images of another size than asked.
- ``model.text_encoder_lora.targets``: each names a layer of the text encoder (checked on a
  CLIPTextModel built on the meta device from ``text_encoder/config.json``).

The UNet is not a limit: diffusers' UNet2DConditionModel runs latents of any side (it sizes
its up-sampling to the skip connections when the side is not a multiple of 2^(down blocks − 1);
measured on 2- and 4-level UNets at sides 1–12).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from textcraftor.config import RunConfig, SampleConfig
from textcraftor.configio import ConfigError


@dataclass(frozen=True)
class ModelLimits:
    """The facts about one model that bound a run's sampling settings."""

    source: str  # model.source these were read for
    scheduler_config: str  # the DDIM scheduler's config, JSON (sorted keys)
    num_train_timesteps: int  # the scheduler's training timesteps (1000 for SD)
    max_num_steps: int  # the largest T whose DDIM timesteps all stay below that
    vae_factor: int  # pixels per latent cell: 2^(len(vae block_out_channels) - 1)
    unet_down_blocks: int  # len(unet down_block_types): for the record, not a limit

    def describe_scheduler(self) -> str:
        """``DDIM, 1000 training timesteps, 'leading' spacing, steps_offset 1``."""
        config = json.loads(self.scheduler_config)
        return (f"DDIM, {self.num_train_timesteps} training timesteps, "
                f"{config.get('timestep_spacing', 'leading')!r} spacing, "
                f"steps_offset {config.get('steps_offset', 0)}")


def model_limits(source: str, cache_dir: str | None = None,
                 revision: str | None = None) -> ModelLimits:
    """Read the limits of ``source`` (a preset, a hub id or a diffusers folder) from its JSON
    configs; the ``tiny`` preset's folder is built when missing (seconds), hub ids fetch only
    the three config files.

    Raises FileNotFoundError when the configs cannot be read (a missing folder or one that is
    not a diffusers pipeline, a hub id not reachable offline), DamagedWeightsError (a
    FileNotFoundError) for damaged ``shapes`` weights.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from textcraftor import models

    if source == "sd15-random":
        scheduler = dict(models.sd15_scheduler().config)
        unet, vae = models.sd15_unet_config(), models.sd15_vae_config()
    else:
        where = models.resolve_source(source, cache_dir)
        kwargs = {"revision": revision} if revision else {}
        try:
            scheduler = DDIMScheduler.load_config(where, subfolder="scheduler", **kwargs)
            unet = UNet2DConditionModel.load_config(where, subfolder="unet", **kwargs)
            vae = AutoencoderKL.load_config(where, subfolder="vae", **kwargs)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(f"model.source {source!r}: could not read the scheduler, "
                                    f"UNet and VAE configs: {error}") from error
    return limits_from_configs(source, scheduler, unet, vae)


def limits_from_configs(source: str, scheduler: Mapping[str, Any], unet: Mapping[str, Any],
                        vae: Mapping[str, Any]) -> ModelLimits:
    """``ModelLimits`` from the three configs as plain mappings (``FrozenDict`` or dict)."""
    plain = {k: v for k, v in scheduler.items() if not k.startswith("_")}
    scheduler_json = json.dumps(plain, sort_keys=True, default=list)
    timesteps, largest = _scheduler_facts(scheduler_json)
    return ModelLimits(source=source, scheduler_config=scheduler_json,
                       num_train_timesteps=timesteps, max_num_steps=largest,
                       vae_factor=2 ** (len(vae["block_out_channels"]) - 1),
                       unet_down_blocks=len(unet["down_block_types"]))


def pipeline_limits(pipeline: Any) -> ModelLimits:
    """``ModelLimits`` of a loaded ``models.Pipeline`` (its modules' configs)."""
    return limits_from_configs(pipeline.source, pipeline.scheduler.config,
                               pipeline.unet.config, pipeline.vae.config)


@functools.lru_cache(maxsize=16)
def _scheduler_facts(scheduler_json: str) -> tuple[int, int]:
    """(training timesteps, the largest T that works), by the same check as ``steps_fit``."""
    config = json.loads(scheduler_json)
    train = int(config.get("num_train_timesteps", 1000))
    largest = next((t for t in range(train, 0, -1) if steps_fit(config, t)), 0)
    return train, largest


def steps_fit(scheduler_config: Mapping[str, Any], num_steps: int) -> bool:
    """Whether a DDIM scheduler built from this config takes ``num_steps`` steps with every
    timestep below its training timesteps (``alphas_cumprod`` is indexed by them)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(dict(scheduler_config))
    try:
        scheduler.set_timesteps(num_steps)
    except ValueError:  # diffusers: num_inference_steps > num_train_timesteps
        return False
    return int(scheduler.timesteps.max()) < scheduler.config.num_train_timesteps


def check_sample_limits(sample: SampleConfig, limits: ModelLimits) -> None:
    """Raise ConfigError naming the first ``sample.*`` field this model cannot take: its value,
    what the model allows and why."""
    t = sample.num_steps
    if t > limits.max_num_steps:
        raise ConfigError(f"sample.num_steps: {t} is more than this scheduler allows "
                          f"({limits.describe_scheduler()}: at most {limits.max_num_steps})")
    if sample.truncation == "direct":
        for name in ("direct_t_min", "direct_t_max"):
            value = getattr(sample, name)
            if value >= limits.num_train_timesteps:
                raise ConfigError(
                    f"sample.{name}: {value} is not a training timestep of this scheduler "
                    f"({limits.num_train_timesteps} training timesteps: at most "
                    f"{limits.num_train_timesteps - 1})")
    if sample.resolution % limits.vae_factor:
        low = sample.resolution // limits.vae_factor * limits.vae_factor
        raise ConfigError(
            f"sample.resolution: {sample.resolution} is not a multiple of this VAE's "
            f"down-sampling factor {limits.vae_factor} (the decoded images would be "
            f"{low} px); use {low or limits.vae_factor} or {low + limits.vae_factor}")


def check_model_limits(config: RunConfig, pipeline: Any = None) -> ModelLimits:
    """Check ``config``'s sampling settings against its model — ``pipeline`` when one is
    already loaded, else the JSON configs of ``config.model.source`` (no weights load). Call it
    before anything expensive: the training and generation CLIs, ``TextCraftor`` and the sweep
    driver do.

    Raises ConfigError naming the field (``sample.num_steps: 1000 is more than this scheduler
    allows (…: at most 999)``), FileNotFoundError when the model's configs cannot be read.
    """
    from textcraftor.lora import check_text_encoder_targets

    m = config.model
    limits = (pipeline_limits(pipeline) if pipeline is not None
              else model_limits(m.source, m.cache_dir, m.revision))
    check_sample_limits(config.sample, limits)
    # model.text_encoder_lora.targets against the encoder's module names (its config only)
    check_text_encoder_targets(m, pipeline.text_encoder if pipeline is not None else None)
    return limits
