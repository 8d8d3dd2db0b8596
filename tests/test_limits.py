"""Limits the scheduler and the models enforce, checked when the config loads and named by
field: DDIM's timesteps (num_steps, direct_t), eta's range, finite numbers, the VAE's
down-sampling factor — from the model's JSON configs, before any weight loads."""

from __future__ import annotations

import json
import shutil
import time
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass

import pytest
import torch
from diffusers import DDIMScheduler

from textcraftor.config import RunConfig, SampleConfig, load_run_config
from textcraftor.configio import ConfigError
from textcraftor.limits import check_model_limits, model_limits, steps_fit

SD_DDIM = "DDIM, 1000 training timesteps, 'leading' spacing, steps_offset 1"


def too_many_steps(t: int) -> str:
    return f"sample.num_steps: {t} is more than this scheduler allows ({SD_DDIM}: at most 999)"


@pytest.fixture(scope="module")
def tiny_scheduler(tiny_source) -> DDIMScheduler:
    return DDIMScheduler.from_pretrained(tiny_source, subfolder="scheduler")


# --- sample.num_steps against DDIM --------------------------------------------------------


def test_the_scheduler_really_fails_at_1000_and_1001_steps(tiny_scheduler):
    """What the check guards against, seen in diffusers itself: SD's DDIM ("leading" spacing,
    steps_offset 1) gives timestep 1000 for T = 1000, one past alphas_cumprod; T = 1001 is
    refused by set_timesteps."""
    scheduler = DDIMScheduler.from_config(tiny_scheduler.config)
    scheduler.set_timesteps(999)
    assert int(scheduler.timesteps.max()) == 999
    scheduler.set_timesteps(1000)
    assert int(scheduler.timesteps.max()) == 1000 == len(scheduler.alphas_cumprod)
    sample = torch.zeros(1, 4, 2, 2)
    with pytest.raises(IndexError):
        scheduler.step(sample, scheduler.timesteps[0], sample)
    with pytest.raises(ValueError, match="cannot be larger than"):
        scheduler.set_timesteps(1001)
    assert [steps_fit(tiny_scheduler.config, t) for t in (1, 999, 1000, 1001)] == [
        True, True, False, False]


@pytest.mark.parametrize("source", ["tiny", "shapes", "sd15-random"])
def test_num_steps_999_passes_1000_and_1001_are_refused(tiny_source, source):
    def config(t):
        return load_run_config(None, [f"model.source={source}", f"sample.num_steps={t}"])

    limits = check_model_limits(config(999))
    assert limits.max_num_steps == 999 and limits.num_train_timesteps == 1000
    for t in (1000, 1001):
        with pytest.raises(ConfigError) as error:
            check_model_limits(config(t))
        assert str(error.value) == too_many_steps(t)


# --- sample.eta, guidance, finite numbers ---------------------------------------------------


def test_ddim_eta_above_one_gives_nan_in_diffusers(tiny_scheduler):
    """The direction term sqrt(1 − ᾱ_prev − σ²) goes negative for eta > 1: NaN, silently."""
    scheduler = DDIMScheduler.from_config(tiny_scheduler.config)
    scheduler.set_timesteps(2)
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1))

    def step(eta):
        return scheduler.step(eps, scheduler.timesteps[0], x, eta=eta,
                              generator=torch.Generator().manual_seed(2)).prev_sample

    assert torch.isfinite(step(1.0)).all()
    assert torch.isnan(step(1.01)).all()


@pytest.mark.parametrize("field, inside, outside, message", [
    ("eta", 1.0, 1.01, "sample.eta: must be in [0, 1], got 1.01"),
    ("eta", 0.0, -0.01, "sample.eta: must be in [0, 1], got -0.01"),
    ("guidance_scale", 0.0, -0.01, "sample.guidance_scale: must be >= 0, got -0.01"),
])
def test_sample_ranges(field, inside, outside, message):
    assert getattr(load_run_config(None, [f"sample.{field}={inside}"]).sample, field) == inside
    with pytest.raises(ConfigError) as error:
        load_run_config(None, [f"sample.{field}={outside}"])
    assert str(error.value) == message


def float_fields() -> list[str]:
    """Every float field of the run config (and float-valued mapping, by one key), dotted."""
    found = []
    for section in fields(RunConfig):
        cls = typing.get_type_hints(RunConfig)[section.name]
        if not is_dataclass(cls):
            continue
        for f, hint in typing.get_type_hints(cls).items():
            if hint is float:
                found.append(f"{section.name}.{f}")
            elif typing.get_origin(hint) is Mapping and typing.get_args(hint)[1] is float:
                found.append(f"{section.name}.{f}.aesthetic")
    return found


def test_float_fields_are_all_found():
    assert float_fields() == [
        "model.unet_lr", "sample.guidance_scale", "sample.eta", "sample.drtune_stop_ratio",
        "reward.weights.aesthetic", "reward.clip_constraint", "reward.scales.aesthetic",
        "train.lr", "train.weight_decay", "train.max_grad_norm",
        "eval.quality_weights.aesthetic", "policy.clip_range", "policy.adv_clip_max",
        "policy.timestep_fraction"]


@pytest.mark.parametrize("path", float_fields())
@pytest.mark.parametrize("text, shown", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"),
                                         ("nan", "nan")])
def test_nan_and_inf_are_refused_in_every_float_field(path, text, shown):
    with pytest.raises(ConfigError) as error:
        load_run_config(None, [f"{path}={text}"])
    assert str(error.value) == f"{path}: expected a finite number, got {shown}"


def test_nan_is_refused_when_a_dataclass_is_built_directly():
    with pytest.raises(ConfigError, match=r"^sample.guidance_scale: must be a finite number, "
                                          r"got inf$"):
        SampleConfig(guidance_scale=float("inf"))
    with pytest.raises(ConfigError, match=r"^sample.eta: must be a finite number, got nan$"):
        SampleConfig(eta=float("nan"))


# --- direct truncation's timesteps ------------------------------------------------------------


def direct(*overrides: str) -> RunConfig:
    return load_run_config(None, ["sample.truncation=direct", "data.pairs=/unused",
                                  *overrides])


def test_direct_timesteps_must_be_training_timesteps(tiny_source):
    check_model_limits(direct("sample.direct_t_min=0", "sample.direct_t_max=999"))
    with pytest.raises(ConfigError) as error:
        check_model_limits(direct("sample.direct_t_max=1000"))
    assert str(error.value) == ("sample.direct_t_max: 1000 is not a training timestep of this "
                                "scheduler (1000 training timesteps: at most 999)")
    with pytest.raises(ConfigError, match=r"^sample.direct_t_min: 1000 is not a training"):
        check_model_limits(direct("sample.direct_t_min=1000", "sample.direct_t_max=1000"))
    with pytest.raises(ConfigError, match=r"^sample.direct_t_max: must be >= direct_t_min=300, "
                                          r"got 200$"):
        direct("sample.direct_t_min=300", "sample.direct_t_max=200")
    # unused outside direct mode: not a reason to refuse a run
    check_model_limits(load_run_config(None, ["sample.direct_t_max=5000"]))


# --- sample.resolution against the VAE --------------------------------------------------------


@pytest.fixture(scope="module")
def configs_only(tiny_source, tmp_path_factory):
    """The tiny preset's JSON configs without a single weight file, its VAE one level deeper
    (5 blocks: 16 px per latent cell)."""
    folder = tmp_path_factory.mktemp("configs-only") / "model"
    for name in ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                 "vae/config.json", "text_encoder/config.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_source / name, folder / name)
    vae = json.loads((folder / "vae" / "config.json").read_text())
    vae["block_out_channels"] = [16, 16, 32, 32, 32]
    vae["down_block_types"] = vae["down_block_types"] + vae["down_block_types"][:1]
    vae["up_block_types"] = vae["up_block_types"] + vae["up_block_types"][:1]
    (folder / "vae" / "config.json").write_text(json.dumps(vae))
    assert not [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")]
    return folder


def test_vae_factor_comes_from_the_model(tiny_source, configs_only):
    assert model_limits("tiny").vae_factor == 8
    assert model_limits("shapes").vae_factor == 4
    assert model_limits("sd15-random").vae_factor == 8
    limits = model_limits(str(configs_only))  # read without any weights
    assert limits.vae_factor == 16 and limits.max_num_steps == 999

    def at(resolution):
        return load_run_config(None, [f"model.source={configs_only}",
                                      f"sample.resolution={resolution}"])

    check_model_limits(at(48))
    with pytest.raises(ConfigError) as error:
        check_model_limits(at(40))
    assert str(error.value) == (
        "sample.resolution: 40 is not a multiple of this VAE's down-sampling factor 16 (the "
        "decoded images would be 32 px); use 32 or 48")
    check_model_limits(load_run_config(None, ["sample.resolution=40"]))  # tiny: 8 px a cell
    # the config itself asks only for a positive size: the multiple is the model's
    check_model_limits(load_run_config(None, ["model.source=shapes", "sample.resolution=60"]))
    with pytest.raises(ConfigError, match="sample.resolution: 60 is not a multiple of this "
                                          "VAE's down-sampling factor 8"):
        check_model_limits(load_run_config(None, ["sample.resolution=60"]))


def test_the_unet_takes_a_latent_side_that_is_not_a_multiple_of_its_down_sampling(pipeline):
    """Why the UNet is no limit: 24 px on the tiny preset is 3 latent cells for a UNet that
    down-samples by 2, and the chain still gives 24 px images (diffusers sizes the up-sampling
    to the skip connections)."""
    from textcraftor.generation import sample_images
    from textcraftor.sampler import PromptTokenizer

    config = load_run_config(None, ["sample.resolution=24", "sample.num_steps=2", "sample.k=1"])
    check_model_limits(config, pipeline)
    images = sample_images(pipeline, pipeline.text_encoder, PromptTokenizer(pipeline.tokenizer),
                           ["a red fox"], [0], config.sample)
    assert images.shape == (1, 3, 24, 24) and torch.isfinite(images).all()


def test_trainer_checks_against_the_pipeline_it_is_given(make_trainer):
    with pytest.raises(ConfigError) as error:
        make_trainer("sample.num_steps=1000")
    assert str(error.value) == too_many_steps(1000)


# --- the command lines: exit 2, the field named, before any weight loads --------------------


@pytest.mark.parametrize("module, source", [("textcraftor.train", "tiny"),
                                            ("textcraftor.generate", "configs-only")])
def test_clis_refuse_1000_steps_before_any_model_loads(run_module, module, source, configs_only,
                                                       tmp_path):
    """Exit 2, the field and the limit on stderr, no traceback, no run folder, in the time the
    imports take. The configs-only folder holds no weight file: the refusal comes from the
    check, not from a failed load (train checks the sources first and would name the missing
    weights; generate shows the limit)."""
    out = ["--output-dir", str(tmp_path / "run")] if module.endswith("train") else [
        "--prompt", "a fox", "--out", str(tmp_path / "images")]
    model = configs_only if source == "configs-only" else source
    started = time.perf_counter()
    result = run_module(module, *out, "--set", f"model.source={model}",
                        "--set", "sample.num_steps=1000")
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == f"error: {too_many_steps(1000)}"
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert elapsed < 60, elapsed  # imports only (~10 s here); models never load
    assert not (tmp_path / "run").exists() and not (tmp_path / "images").exists()


@pytest.mark.parametrize("args, message", [
    (["--set", "sample.num_steps"], "error: --set 'sample.num_steps': expected key=value, e.g. "
                                    "train.steps=100"),
    (["--set", "sample.stepz=3"], "error: unknown key(s) sample.stepz; allowed under sample: "),
    (["--set", "sample.eta=1.5"], "error: sample.eta: must be in [0, 1], got 1.5"),
    (["--alpha", "1.5"], "error: --alpha: must be in [0, 1], got 1.5"),
    (["--alpha", "nan"], "error: --alpha: must be in [0, 1], got nan"),
    (["--finetuned-steps", "21"], "error: --finetuned-steps: must be in [0, "
                                  "sample.num_steps=20], got 21"),
    (["--finetuned-steps", "-1"], "error: --finetuned-steps: must be in [0, "
                                  "sample.num_steps=20], got -1"),
    (["--seeds", "0,x"], "error: --seeds: '0,x' is not a comma-separated list of integers "
                         "(e.g. 0,1,2)"),
    (["--run", "/nonexistent/run"], "error: --run /nonexistent/run: no such folder"),
])
def test_generate_reports_bad_input_as_an_error_line(args, message, capsys, tmp_path):
    """In-process: the same main() the command runs; nothing is generated."""
    from textcraftor.generate import main

    assert main(["--prompt", "a fox", "--out", str(tmp_path / "images"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert not (tmp_path / "images").exists()
