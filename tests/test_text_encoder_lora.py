"""Text-encoder LoRA (``model.text_encoder_lora``, TexForce): only the adapter trains, the
original encoder stays, the adapter survives a checkpoint (ours and peft's own format), and a
text-encoder LoRA of one run merges at generation with a UNet LoRA of another."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import PeftModel
from transformers import CLIPTextModel

from textcraftor.config import load_run_config
from textcraftor.configio import ConfigError, from_dict, to_dict
from textcraftor.generate import main as generate_main
from textcraftor.generate import merge_adapter_option, parse_adapter
from textcraftor.generation import sample_images
from textcraftor.limits import check_model_limits
from textcraftor.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TEXT_ENCODER_LORA, UNET_LORA
from textcraftor.sampler import PromptTokenizer

PROMPTS = ["a lighthouse on a cliff at dusk", "a bowl of ramen, studio lighting"]
SEEDS = [3, 4]
LORA = ("model.text_encoder_lora.rank=4", "train.lr=0.05", "train.eval_every=0")
UNET_LORA_RUN = ("model.train_text_encoder=false", "model.train_unet=lora",
                 "model.unet_lr=0.05", "train.eval_every=0")


def encode(encoder, pipeline) -> torch.Tensor:
    ids = PromptTokenizer(pipeline.tokenizer)(PROMPTS)
    with torch.no_grad():
        return encoder.eval()(ids)[0]


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# --- configuration ---------------------------------------------------------------------------


def test_set_reaches_the_nested_field_and_round_trips():
    config = load_run_config(None, ["model.text_encoder_lora.rank=16"])
    lora = config.model.text_encoder_lora
    assert (lora.rank, lora.lora_alpha(), lora.targets) == (
        16, 16.0, ("q_proj", "k_proj", "v_proj", "out_proj"))
    data = to_dict(config)
    assert data["model"]["text_encoder_lora"]["rank"] == 16
    assert from_dict(type(config), data) == config
    assert load_run_config(None).model.text_encoder_lora.rank == 0  # off by default


@pytest.mark.parametrize("overrides, field", [
    (["model.text_encoder_lora.rank=-1"], "model.text_encoder_lora.rank"),
    (["model.text_encoder_lora.alpha=0"], "model.text_encoder_lora.alpha"),
    (["model.text_encoder_lora.targets=[]"], "model.text_encoder_lora.targets"),
    (["model.text_encoder_lora.rank=4", "model.train_text_encoder=false",
      "model.train_unet=lora"], "model.text_encoder_lora.rank"),
])
def test_bad_lora_settings_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_run_config(None, overrides)


@pytest.mark.parametrize("targets, named", [
    ("[q_proj, nope_proj]", "'nope_proj'"),
    ("[mlp]", "'mlp' (matches only CLIPMLP)"),  # a module, but none peft's LoRA wraps
])
def test_targets_that_match_no_layer_are_refused_before_weights_load(targets, named, tiny_source):
    config = load_run_config(None, ["model.text_encoder_lora.rank=4",
                                    f"model.text_encoder_lora.targets={targets}"])
    with pytest.raises(ConfigError, match="model.text_encoder_lora.targets") as error:
        check_model_limits(config)  # the encoder built on the meta device from its config
    assert named in str(error.value) and "q_proj" in str(error.value)  # what would fit


def test_a_trainer_refuses_bad_targets_before_training(make_trainer):
    with pytest.raises(ConfigError, match="'nope_proj'"):
        make_trainer("model.text_encoder_lora.rank=4",
                     "model.text_encoder_lora.targets=[q_proj, nope_proj]")


# --- training and checkpoints ----------------------------------------------------------------


def test_only_the_lora_trains_and_the_original_encoder_stays(make_trainer):
    trainer = make_trainer(*LORA, "train.steps=1")
    pipe = trainer.pipeline
    names = [n for n, _ in trainer.trainable]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names), names
    # r·(in + out) per adapted 32→32 projection: 4 projections × 2 layers
    config = pipe.text_encoder.config
    expected = 4 * config.num_hidden_layers * 4 * (2 * config.hidden_size)
    assert sum(p.numel() for _, p in trainer.trainable) == expected
    assert sum(p.numel() for p in pipe.text_encoder.parameters() if p.requires_grad) == expected
    base_before = {k: v for k, v in state(pipe.text_encoder).items() if "lora_" not in k}
    original_before = state(pipe.original_text_encoder)
    output_before = encode(pipe.text_encoder, pipe)
    torch.testing.assert_close(output_before, encode(pipe.original_text_encoder, pipe))  # B = 0

    trainer.fit()
    after = state(pipe.text_encoder)
    assert all(torch.equal(after[k], v) for k, v in base_before.items())  # base weights frozen
    assert all(torch.equal(v, original_before[k])
               for k, v in pipe.original_text_encoder.state_dict().items())
    assert not any(hasattr(m, "lora_A") for m in pipe.original_text_encoder.modules())
    assert (encode(pipe.text_encoder, pipe) - output_before).abs().max() > 1e-4


def test_a_saved_adapter_reloads_through_the_checkpoint_and_through_peft(make_trainer, load_tiny,
                                                                         tiny_source):
    trainer = make_trainer(*LORA, "train.steps=1")
    trainer.fit()
    checkpoint = trainer._last_checkpoint
    expected = encode(trainer.pipeline.text_encoder, trainer.pipeline)
    assert (checkpoint / f"{TEXT_ENCODER_LORA}.safetensors").is_file()
    assert not (checkpoint / "text_encoder.safetensors").exists()  # the adapter only
    folder = checkpoint / TEXT_ENCODER_LORA
    assert (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_WEIGHTS).is_file()

    resumed = make_trainer(*LORA, "train.steps=2")  # a fresh pipeline, its LoRA at B = 0
    assert not torch.equal(encode(resumed.pipeline.text_encoder, resumed.pipeline), expected)
    resumed.restore(checkpoint)
    torch.testing.assert_close(encode(resumed.pipeline.text_encoder, resumed.pipeline), expected,
                               rtol=0, atol=0)
    metrics = resumed.fit()  # resumes (optimizer state too) and trains on to step 2
    assert resumed.step == 2 and math.isfinite(metrics["loss"])

    base = CLIPTextModel.from_pretrained(tiny_source, subfolder="text_encoder")
    other_tool = PeftModel.from_pretrained(base, str(folder))  # peft's own loader
    torch.testing.assert_close(encode(other_tool, trainer.pipeline), expected)


# --- generation: a text-encoder LoRA and a UNet LoRA of two runs ------------------------------


@pytest.fixture
def two_runs(make_trainer, tmp_path):
    """A text-encoder LoRA run and, separately, a UNet LoRA run (frozen text encoder)."""
    encoder_run = make_trainer(*LORA, "train.steps=1", f"output_dir={tmp_path / 'te'}")
    encoder_run.fit()
    unet_run = make_trainer(*UNET_LORA_RUN, "train.steps=1", f"output_dir={tmp_path / 'unet'}")
    unet_run.fit()
    return str(encoder_run.run_dir), str(unet_run.run_dir)


def images_with(load_tiny, *adapters: tuple[str, str]) -> torch.Tensor:
    """The tiny pipeline's images with each (option, RUN[:SCALE]) merged, fine-tuned encoder
    (alpha 1) driving every step."""
    config = load_run_config(None, ["sample.num_steps=4", "sample.resolution=32", "sample.k=2"])
    pipeline = load_tiny()
    for option, value in adapters:
        merge_adapter_option(pipeline, parse_adapter(value, option), "tiny")
    return sample_images(pipeline, pipeline.text_encoder, PromptTokenizer(pipeline.tokenizer),
                         PROMPTS, SEEDS, config.sample)


def test_lora_of_two_runs_merge_at_generation(two_runs, load_tiny):
    encoder_run, unet_run = two_runs
    from textcraftor.checkpoint import latest_checkpoint

    unet_folder = latest_checkpoint(unet_run) / UNET_LORA  # the UNet's LoRA in peft's format too
    assert (unet_folder / ADAPTER_CONFIG).is_file() and (unet_folder / ADAPTER_WEIGHTS).is_file()
    base = images_with(load_tiny)
    encoder_only = images_with(load_tiny, ("--text-encoder-lora", encoder_run))
    unet_only = images_with(load_tiny, ("--unet-lora", unet_run))
    both = images_with(load_tiny, ("--text-encoder-lora", encoder_run), ("--unet-lora", unet_run))
    pairs = [(base, encoder_only), (base, unet_only), (base, both), (encoder_only, both),
             (unet_only, both), (encoder_only, unet_only)]
    assert all((a - b).abs().max() > 1e-4 for a, b in pairs)
    # scale 0 merges nothing: exactly the base model's images
    zero = images_with(load_tiny, ("--text-encoder-lora", f"{encoder_run}:0"),
                       ("--unet-lora", f"{unet_run}:0"))
    assert torch.equal(zero, base)
    half = images_with(load_tiny, ("--text-encoder-lora", f"{encoder_run}:0.5"))
    assert (half - base).abs().max() > 1e-4 and (half - encoder_only).abs().max() > 1e-4


def test_generate_cli_takes_both_adapters(two_runs, tmp_path):
    encoder_run, unet_run = two_runs
    common = ["--prompt", PROMPTS[0], "--seeds", "0"]
    assert generate_main([*common, "--text-encoder-lora", encoder_run, "--unet-lora",
                          f"{unet_run}:1.0", "--out", str(tmp_path / "both")]) == 0
    assert generate_main([*common, "--run", encoder_run, "--alpha", "0",  # base images
                          "--out", str(tmp_path / "base")]) == 0
    assert generate_main([*common, "--run", encoder_run, "--out", str(tmp_path / "run")]) == 0
    assert generate_main([*common, "--text-encoder-lora", encoder_run,
                          "--out", str(tmp_path / "lora")]) == 0
    png = {name: [p.read_bytes() for p in sorted((tmp_path / name).glob("*.png"))]
           for name in ("both", "base", "run", "lora")}
    assert len(png["both"]) == 1 and png["both"] != png["base"] and png["lora"] != png["base"]
    assert png["run"] == png["lora"]  # --run merges its LoRA as --text-encoder-lora does


@pytest.mark.parametrize("value, message", [
    ("{unet}", f"--text-encoder-lora {{unet}}: its checkpoint .* holds no {TEXT_ENCODER_LORA}"),
    ("{te}:nan", "--text-encoder-lora: scale must be a finite number"),
    ("{te}:inf", "--text-encoder-lora: scale must be a finite number"),
    ("{te}:big", "--text-encoder-lora: scale 'big'"),
    ("{te}/missing", "--text-encoder-lora .*missing: no such folder"),
])
def test_bad_adapter_options_are_refused_naming_the_option(two_runs, capsys, tmp_path, value,
                                                          message):
    import re

    encoder_run, unet_run = two_runs
    given = value.format(te=encoder_run, unet=unet_run)
    code = generate_main(["--prompt", "x", "--text-encoder-lora", given,
                          "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message.format(unet=re.escape(unet_run)), err), err
    assert not (tmp_path / "x").exists()


def test_unet_lora_missing_from_a_text_encoder_run_is_refused(two_runs, capsys, tmp_path):
    encoder_run, _ = two_runs
    code = generate_main(["--prompt", "x", "--unet-lora", encoder_run,
                          "--out", str(tmp_path / "x")])
    assert code == 2
    assert f"--unet-lora {encoder_run}: its checkpoint" in capsys.readouterr().err


def test_load_finetuned_merges_a_lora_checkpoint(two_runs, load_tiny):
    from textcraftor.checkpoint import latest_checkpoint
    from textcraftor.generate import load_finetuned

    encoder_run, _ = two_runs
    pipeline = load_finetuned(load_tiny(), latest_checkpoint(encoder_run))
    assert not any(hasattr(m, "lora_A") for m in pipeline.text_encoder.modules())  # merged
    merged = load_tiny()
    merge_adapter_option(merged, parse_adapter(encoder_run, "--text-encoder-lora"), "tiny")
    torch.testing.assert_close(encode(pipeline.text_encoder, pipeline),
                               encode(merged.text_encoder, merged), rtol=0, atol=0)
    assert not torch.equal(encode(pipeline.text_encoder, pipeline),
                           encode(pipeline.original_text_encoder, pipeline))


def test_merge_copies_nothing_into_the_original_encoder(two_runs, load_tiny):
    encoder_run, _ = two_runs
    pipeline = load_tiny()
    original = copy.deepcopy(pipeline.original_text_encoder.state_dict())
    merge_adapter_option(pipeline, parse_adapter(encoder_run, "--text-encoder-lora"), "tiny")
    assert all(torch.equal(v, original[k])
               for k, v in pipeline.original_text_encoder.state_dict().items())


# --- a text-encoder LoRA run as the encoder to start from or transfer ----------------------


def test_text_encoder_from_a_lora_run_is_its_source_encoder_with_the_lora_merged(two_runs,
                                                                                 load_tiny):
    """--text-encoder-from (and model.text_encoder_from, image tasks) of a LoRA run: the run's
    own source encoder with its LoRA merged at scale 1, i.e. exactly what generate's
    --text-encoder-lora gives on the same base."""
    from textcraftor.generate import transfer_text_encoder

    encoder_run, _ = two_runs
    transferred = load_tiny()
    assert transfer_text_encoder(transferred, encoder_run, "tiny") == "tiny"
    merged = load_tiny()
    merge_adapter_option(merged, parse_adapter(encoder_run, "--text-encoder-lora"), "tiny")
    torch.testing.assert_close(encode(transferred.text_encoder, transferred),
                               encode(merged.text_encoder, merged), rtol=0, atol=0)
    assert not torch.equal(encode(transferred.text_encoder, transferred),
                           encode(transferred.original_text_encoder, transferred))
    assert not any(hasattr(m, "lora_A") for m in transferred.text_encoder.modules())


def test_a_run_starts_from_a_lora_runs_tuned_encoder(two_runs, make_trainer, load_tiny,
                                                      tmp_path):
    encoder_run, _ = two_runs
    trainer = make_trainer(f"model.text_encoder_from={encoder_run}", "train.steps=1",
                           f"output_dir={tmp_path / 'from-lora'}")
    merged = load_tiny()
    merge_adapter_option(merged, parse_adapter(encoder_run, "--text-encoder-lora"), "tiny")
    pipeline = trainer.pipeline
    # it trains on from there, as a whole encoder
    assert pipeline.text_encoder.training
    assert all(p.requires_grad for p in pipeline.text_encoder.parameters())
    torch.testing.assert_close(encode(pipeline.text_encoder, pipeline),
                               encode(merged.text_encoder, merged), rtol=0, atol=0)


def test_a_lora_checkpoint_without_its_run_or_any_encoder_is_refused_naming_it(
        two_runs, load_tiny, make_trainer, monkeypatch, capsys, tmp_path):
    import shutil

    from textcraftor.checkpoint import latest_checkpoint
    from textcraftor.generate import transfer_text_encoder

    encoder_run, unet_run = two_runs
    lone = tmp_path / "lone" / "step_0000001"  # a checkpoint copied out of its run folder
    shutil.copytree(latest_checkpoint(encoder_run), lone)
    with pytest.raises(ConfigError) as error:
        transfer_text_encoder(load_tiny(), str(lone), "tiny")
    assert str(error.value).startswith(f"--text-encoder-from {lone} (model.source=unknown): ")
    assert "holds a text-encoder LoRA but no run config says which encoder it tuned" in str(
        error.value)
    # refused before any weights load, by generate, a trainer and the image tasks alike
    def no_loading(*_, **__):
        raise AssertionError("weights loaded before the encoder's source was checked")

    monkeypatch.setattr("textcraftor.models.load_pipeline", no_loading)
    code = generate_main(["--prompt", PROMPTS[0], "--seeds", "0", "--text-encoder-from",
                          str(lone), "--out", str(tmp_path / "never")])
    assert code == 2 and "no run config says which encoder" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^model.text_encoder_from .* no run config says"):
        make_trainer(f"model.text_encoder_from={lone}", f"output_dir={tmp_path / 'never'}")
    monkeypatch.undo()
    with pytest.raises(ConfigError) as error:
        transfer_text_encoder(load_tiny(), unet_run, "tiny", "model.text_encoder_from")
    assert str(error.value).startswith(f"model.text_encoder_from {unet_run} (model.source=tiny)")
    assert "holds no text encoder and no text-encoder LoRA (it holds unet_lora)" in str(
        error.value)
