"""Held-out evaluation on the tiny preset: every metric with N beside it, the base model as the
KID/FID reference, a folder as the reference, per-prompt tables with categories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.utils import save_image

PARTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "PartiPrompts.tsv"
EVAL = ("eval.diversity=true", "eval.distribution=true", "data.eval_seeds=[0, 1]",
        "data.heldout_count=3", f"data.prompts={PARTI}")


def test_base_model_is_its_own_reference_and_training_moves_away(make_trainer):
    trainer = make_trainer(*EVAL, "train.lr=0.05", "train.steps=3", "train.eval_every=3",
                           "train.save_every=3")
    before = trainer.evaluate()
    m = before.metrics
    assert m["eval/num_images"] == 6 and m["eval/num_reference"] == 6
    # offline (the tiny preset), the networks are random: the metrics are named so, never
    # FID, KID or LPIPS
    assert not {"eval/fid", "eval/kid", "eval/diversity_lpips"} & set(m)
    assert abs(m["eval/fd_random_features"]) < 1e-4 and abs(m["eval/cmmd"]) < 1e-4
    assert abs(m["eval/kd_random_features"]) < 5e-3  # unbiased: ≈ 0, slightly negative
    assert abs(m["eval/fd_clip"]) < 1e-3
    assert m["eval/diversity_random_features"] > 0 and m["eval/diversity_clip"] > 0
    # the diversity objective here: no oracle, no trained LPIPS trunk: the CLIP-space distance
    assert m["eval/diversity"] == m["eval/diversity_clip"]
    for name in ("eval/aesthetic", "eval/clip", "eval/train_objective"):  # clip although λ = 0
        assert name in m
    trainer.fit()
    after = trainer.evaluate().metrics
    assert after["eval/fd_random_features"] > 1e-3 and after["eval/cmmd"] > m["eval/cmmd"]
    # a = 0 is the base model again: the reference distance returns to zero
    assert abs(trainer.evaluate(alpha=0.0).metrics["eval/fd_random_features"]) < 1e-4


def test_per_prompt_table_carries_categories_and_lands_in_the_checkpoint(make_trainer):
    trainer = make_trainer(*EVAL, "train.steps=1", "train.eval_every=1", "train.save_every=1",
                           "train.sample_grid=true")
    trainer.fit()
    run_dir = trainer.run_dir
    table = json.loads((run_dir / "eval" / "step_0000001.json").read_text())
    assert table["step"] == 1 and table["seeds"] == [0, 1]
    rows = table["prompts"]
    assert [r["prompt"] for r in rows] == [p.text for p in trainer.split.heldout]
    assert all(r["category"] for r in rows)
    assert {"aesthetic", "clip", "train_objective", "diversity_random_features",
            "diversity_clip", "diversity"} <= set(
        rows[0])
    assert "quality" not in rows[0]  # no eval.quality_weights: no fixed-weight quality score
    inside = run_dir / "checkpoints" / "step_0000001"
    assert json.loads((inside / "eval.json").read_text()) == table
    assert (inside / "samples.png").is_file()


def test_reference_folder(make_trainer, tmp_path):
    folder = tmp_path / "reference"
    folder.mkdir()
    for i in range(5):
        save_image(torch.rand(3, 40, 40), folder / f"{i}.png")
    trainer = make_trainer(*EVAL, f"eval.reference_dir={folder}")
    m = trainer.evaluate().metrics
    assert m["eval/num_reference"] == 5 and m["eval/fd_random_features"] > 0

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        make_trainer(*EVAL, f"eval.reference_dir={empty}").evaluate()


def test_too_few_images_for_kid_names_the_minimum(make_trainer, make_config):
    from textcraftor.config import ConfigError

    with pytest.raises(ConfigError, match="data.heldout_count.*at least 2 evaluation images"):
        make_config("eval.distribution=true", "data.heldout_count=1")
    # a reference folder of one image is too few for KID: named at evaluation
    trainer = make_trainer(*EVAL)
    one = torch.rand(1, 3, 32, 32)
    result = trainer.evaluate()
    with pytest.raises(ValueError, match="at least 2 images"):
        trainer.evaluator(result.images, {}, result.prompts, result.seeds, (), one)


def test_quality_weights_score_every_image_with_fixed_weights_and_never_train(make_trainer):
    """eval.quality_weights (a study's objectives.quality_weights): a reward the run does not
    train on is not in the objective (never built for, never run in a training step); the
    evaluator builds it on first use and scores it;
    eval/quality = Σ qᵢ·sᵢ·Rᵢ per image, averaged, beside the run's own eval/train_objective; the
    per-prompt table carries both, and its prompts average to the run's figure."""
    from textcraftor.rewards import REWARD_SCALES

    trainer = make_trainer("eval.quality_weights={pickscore: 2}", "data.eval_seeds=[0, 1]",
                           "data.heldout_count=3", objective=None)  # built from the config
    assert trainer.objective.coefficients == {"aesthetic": 1.0 * REWARD_SCALES["aesthetic"]}
    assert trainer.evaluator._scoring is None  # nothing built before the first evaluation
    step = trainer.train_step(1)
    assert "train/pickscore" not in step and trainer.evaluator._scoring is None
    result = trainer.evaluate()
    assert set(trainer.evaluator.scoring_rewards) == {"pickscore", "clip"}  # built to score
    m = result.metrics
    assert m["eval/quality"] == pytest.approx(2 * REWARD_SCALES["pickscore"] * m["eval/pickscore"],
                                              rel=1e-5)
    assert m["eval/train_objective"] == pytest.approx(
        REWARD_SCALES["aesthetic"] * m["eval/aesthetic"], rel=1e-5)
    rows = result.table(0)["prompts"]
    assert len(rows) == 3 and all({"quality", "train_objective"} <= set(r) for r in rows)
    assert sum(r["quality"] for r in rows) / 3 == pytest.approx(m["eval/quality"], rel=1e-5)


def test_every_per_image_score_and_diversity_has_its_interval_and_per_seed_values(make_trainer):
    """eval/<name>_ci_low/_high (textcraftor.bootstrap, prompts then seeds resampled) bracket
    each per-image score and each diversity; the table keeps each image's score ([P][S]), whose
    mean is the metric; eval/num_prompts and eval/num_seeds give the N."""
    trainer = make_trainer(*EVAL, "eval.quality_weights={aesthetic: 1}", objective=None)
    result = trainer.evaluate()
    m = result.metrics
    for name in ("aesthetic", "clip", "quality", "train_objective",
                 "diversity_random_features", "diversity_clip", "diversity"):
        assert m[f"eval/{name}_ci_low"] <= m[f"eval/{name}"] <= m[f"eval/{name}_ci_high"], name
        assert m[f"eval/{name}_ci_low"] < m[f"eval/{name}_ci_high"], name  # 3 prompts differ
    assert (m["eval/num_prompts"], m["eval/num_seeds"]) == (3.0, 2.0)
    per_seed = result.table(0)["per_seed"]
    # no oracle on the tiny preset: the alignment objective is the CLIP score
    assert set(per_seed) == {"aesthetic", "clip", "quality", "train_objective", "alignment"}
    assert m["eval/alignment"] == m["eval/clip"] and per_seed["alignment"] == per_seed["clip"]
    assert [len(row) for row in per_seed["quality"]] == [2, 2, 2]
    assert sum(map(sum, per_seed["quality"])) / 6 == pytest.approx(m["eval/quality"], rel=1e-5)


def test_metrics_are_named_for_the_networks_they_use(make_trainer):
    """FID, KID and LPIPS by name only with their trained networks; the diversity objective's
    source follows eval.diversity_metric (no network is built to name them)."""
    trained = make_trainer("eval.features=inception", "eval.lpips_trunk=pretrained").evaluator
    assert trained.distance_names() == {"fid": "fid", "kid": "kid", "kid_std": "kid_std"}
    assert trained.lpips_name == "diversity_lpips"
    assert trained.diversity_source() == "diversity_lpips"  # auto, no oracle: trained LPIPS
    offline = make_trainer().evaluator
    assert offline.distance_names()["fid"] == "fd_random_features"
    assert offline.lpips_name == "diversity_random_features"
    assert offline.diversity_source() == "diversity_clip"  # auto: never a random trunk's
    chosen = make_trainer("eval.diversity_metric=lpips").evaluator
    assert chosen.diversity_source() == "diversity_random_features"
    assert trained._lpips is None and trained._image_features is None  # nothing built
