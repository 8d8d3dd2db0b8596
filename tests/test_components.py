"""``python -m study.components``: pipelines assembled from a base model, a tuned text encoder
and a tuned UNet, evaluated on the same prompts and seeds and paired per base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.components import (
    PipelineSpec,
    compare_components,
    main,
    parse_pipeline,
    with_untuned,
)
from textcraftor.configio import ConfigError

OBJECTIVES = ("quality", "alignment")
EVAL = ("data.eval_seeds=[0, 1]", "train.eval_every=0", "eval.quality_weights={aesthetic: 1}")


@pytest.fixture
def runs(make_trainer, tmp_path):
    """A text-encoder run and a UNet-LoRA run (text encoder frozen) on the tiny preset, one
    step each at a large learning rate, each with its own final evaluation."""
    te = make_trainer(*EVAL, "train.steps=1", "train.lr=0.1", f"output_dir={tmp_path / 'te'}")
    te.fit()
    unet = make_trainer(*EVAL, "train.steps=1", "model.train_text_encoder=false",
                        "model.train_unet=lora", "model.unet_lr=0.5",
                        f"output_dir={tmp_path / 'unet'}")
    unet.fit()
    return str(te.run_dir), str(unet.run_dir)


def own_evaluation(run: str, column: str) -> list:
    found = sorted((Path(run) / "eval").glob("step_*.json"))
    return json.loads(found[-1].read_text())["per_seed"][column]


def test_each_part_is_the_one_its_run_tuned_and_pairs_stay_within_a_model(runs, tmp_path):
    te, unet = runs
    specs = [parse_pipeline(words.split()) for words in (
        f"text-encoder model=tiny text_encoder={te}", f"unet model=tiny unet={unet}",
        f"both model=tiny text_encoder={te} unet={unet}", "again model=tiny")]
    table = compare_components(specs, objectives=OBJECTIVES)
    rows = {row["name"]: row for row in table["pipelines"]}
    assert list(rows) == ["text-encoder", "unet", "both", "again"]  # "again" is untuned
    # assembled from the runs' checkpoints, evaluated as the runs evaluated themselves: the
    # per-image quality equals each run's own last evaluation, value for value
    for name, run in (("text-encoder", te), ("unet", unet)):
        assert rows[name]["table"]["per_seed"]["quality"] == own_evaluation(run, "quality")
    both = rows["both"]["table"]["per_seed"]["quality"]
    assert both != rows["text-encoder"]["table"]["per_seed"]["quality"]
    assert both != rows["unet"]["table"]["per_seed"]["quality"]
    assert rows["text-encoder"]["table"]["per_seed"]["quality"] != \
        rows["again"]["table"]["per_seed"]["quality"]
    versus = rows["both"]["versus"]
    assert set(versus) == {"text-encoder", "unet", "again"}
    assert versus["again"]["quality"]["num_prompts"] == 2
    assert versus["again"]["quality"]["num_seeds"] == 2
    for row in rows.values():
        assert row["quality_ci_low"] <= row["quality"] <= row["quality_ci_high"]


def test_a_text_encoder_lora_merges_beside_a_unet_lora(runs, make_trainer, tmp_path):
    """TexForce's combination: a text-encoder LoRA from one run, merged (scale 1) with a UNet
    LoRA from another; the LoRA pipeline alone scores as its run scored itself."""
    _, unet = runs
    lora = make_trainer(*EVAL, "train.steps=1", "train.lr=0.5", "model.text_encoder_lora.rank=4",
                        f"output_dir={tmp_path / 'te-lora'}")
    lora.fit()
    specs = [parse_pipeline(words.split()) for words in (
        f"te-lora model=tiny text_encoder={lora.run_dir}", f"unet model=tiny unet={unet}",
        f"both model=tiny text_encoder={lora.run_dir} unet={unet}")]
    rows = {row["name"]: row for row in
            compare_components(specs, objectives=OBJECTIVES)["pipelines"]}
    quality = {name: row["table"]["per_seed"]["quality"] for name, row in rows.items()}
    own = own_evaluation(str(lora.run_dir), "quality")
    for mine, theirs in zip(quality["te-lora"], own):
        assert mine == pytest.approx(theirs, rel=1e-5)  # merged W + (α/r)·B·A ≈ the adapter
    assert quality["te-lora"] != quality["tiny/untuned"]
    assert quality["both"] != quality["te-lora"] and quality["both"] != quality["unet"]


def test_an_untuned_pipeline_is_added_per_model_and_identical_pipelines_pair_to_zero(runs):
    te, _ = runs
    table = compare_components([PipelineSpec("tuned", "tiny", text_encoder=te),
                                PipelineSpec("tuned-again", "tiny", text_encoder=te)],
                               objectives=OBJECTIVES)
    names = [row["name"] for row in table["pipelines"]]
    assert names == ["tiny/untuned", "tuned", "tuned-again"]
    same = table["pipelines"][1]["versus"]["tuned-again"]["quality"]
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    assert same["verdict"] == "indistinguishable"


def test_the_command_writes_its_table_and_prints_it(runs, tmp_path, capsys):
    te, _ = runs
    out = tmp_path / "table.json"
    assert main(["--pipeline", "tuned", "model=tiny", f"text_encoder={te}",
                 "--objectives", "quality,alignment", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert [row["name"] for row in table["pipelines"]] == ["tiny/untuned", "tuned"]
    assert table["eval_config"]["data"]["eval_seeds"] == [0, 1]
    printed = capsys.readouterr().out
    assert "| tuned | tiny |" in printed and "Δquality vs untuned [95 %]" in printed


@pytest.mark.parametrize(("words", "message"), [
    (["model=tiny"], "the first word is the pipeline's name"),
    (["a", "text_encoder=x"], "--pipeline a: model=SOURCE is required"),
    (["a", "model=tiny", "vae=x"], "'vae=x' is not one of model=…, text_encoder=…, unet=…"),
    (["a", "model=tiny", "model=shapes"], "--pipeline a: model given twice"),
])
def test_a_malformed_pipeline_is_named(words, message):
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(words)


def test_bad_parts_are_refused_before_any_model_loads(runs, tmp_path, capsys):
    te, unet = runs
    with pytest.raises(ConfigError, match="the name 'a' is given twice"):
        with_untuned([PipelineSpec("a", "tiny"), PipelineSpec("a", "shapes")])
    cases = [
        (["a", "model=shapes", f"unet={unet}"],
         f"--pipeline a: unet={unet} was tuned on model.source=tiny, the pipeline's model is "
         "shapes: a tuned UNet fits only its own base model"),
        (["a", "model=tiny", f"unet={te}"],
         f"--pipeline a: unet={te} did not tune the UNet (its model.train_unet is none)"),
        (["a", "model=tiny", f"text_encoder={tmp_path / 'nothing'}"],
         f"--pipeline a: text_encoder={tmp_path / 'nothing'}: no such folder"),
        (["a", "model=/no/such/model"], "--pipeline model=/no/such/model"),
        (["a", "model=tiny", f"text_encoder={te}", "--objectives", "beauty"],
         "--objectives: 'beauty' is not one of quality, diversity, alignment"),
    ]
    for words, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["--pipeline", *words, "--out", str(tmp_path / "x.json")])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_a_unet_stage_starts_from_a_tuned_text_encoder_and_keeps_it_frozen(runs, make_trainer,
                                                                            tmp_path):
    """model.text_encoder_from: the reference's UNet stage after a text-encoder run."""
    import torch

    from textcraftor.checkpoint import latest_checkpoint, load_checkpoint

    te, _ = runs
    tuned = load_checkpoint(latest_checkpoint(te)).weights["text_encoder"]
    stage = make_trainer(*EVAL, "train.steps=1", "model.train_text_encoder=false",
                         "model.train_unet=lora", "model.unet_lr=0.5",
                         f"model.text_encoder_from={te}", f"output_dir={tmp_path / 'stage'}")
    for name, weight in stage.pipeline.text_encoder.state_dict().items():
        assert torch.equal(weight, tuned[name]), name
    stage.fit()
    for name, weight in stage.pipeline.text_encoder.state_dict().items():
        assert torch.equal(weight, tuned[name]), name  # frozen through the UNet's step
    # the sequential pipeline (its UNet with the encoder it was trained with) is the stage's
    # own last evaluation; the components command assembles it from the two runs
    table = compare_components([PipelineSpec("both", "tiny", text_encoder=te,
                                             unet=str(stage.run_dir))], objectives=OBJECTIVES)
    both = table["pipelines"][1]
    assert both["name"] == "both"
    assert both["table"]["per_seed"]["quality"] == own_evaluation(str(stage.run_dir), "quality")


def test_a_missing_text_encoder_run_is_named_at_config_load(make_config, tmp_path):
    with pytest.raises(ConfigError, match=r"model.text_encoder_from: '/no/run': no such folder"):
        make_config("model.text_encoder_from=/no/run")
