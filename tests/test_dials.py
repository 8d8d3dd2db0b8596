"""The inference dials: the grid (a × M), the shared-prefix images against ``sample_images``
setting by setting, the evaluation of every setting, the best-setting rule, and the study's
configuration checks."""

from __future__ import annotations

import math

import pytest
import torch

from study.config import load_study_config
from study.dial_table import best_setting, study_dials
from textcraftor.config import SampleConfig
from textcraftor.configio import ConfigError
from textcraftor.dial_grid import DialSetting, dial_settings, resolve_finetuned_steps


def test_the_grid_has_each_setting_once_and_the_untuned_model_once():
    sample = SampleConfig(num_steps=10, k=3)
    settings = dial_settings([0, 0.5, 1], ["k_train", "half", "all", 5], sample)
    assert settings == [DialSetting(0.0, 10), DialSetting(0.5, 3), DialSetting(0.5, 5),
                        DialSetting(0.5, 10), DialSetting(1.0, 3), DialSetting(1.0, 5),
                        DialSetting(1.0, 10)]
    # k_train: last_k's K, random_k's largest draw, none for direct (left out)
    assert resolve_finetuned_steps("k_train", SampleConfig(num_steps=10, truncation="random_k",
                                                           k_min=1, k_max=4)) == 4
    direct = SampleConfig(num_steps=10, truncation="direct")
    assert resolve_finetuned_steps("k_train", direct) is None
    assert dial_settings([1], ["k_train", "all"], direct) == [DialSetting(1.0, 10)]
    assert resolve_finetuned_steps("half", SampleConfig(num_steps=1, k=1)) == 1
    for bad, message in (((1.5,), ["all"]), "alphas: 1.5 lies outside [0, 1]"), \
            (((1,), [11]), "finetuned_steps: 11 lies outside [1, T=10]"), \
            (((1,), [0]), "finetuned_steps: 0 lies outside [1, T=10]"), \
            (((1,), ["most"]), "finetuned_steps: 'most' is neither"):
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            dial_settings(*bad, sample)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_dial_images_are_sample_images_setting_by_setting(make_trainer, eta):
    """Every setting continues the one base chain from step T − M (with the samples' noise
    streams there, for eta > 0): bit for bit the images ``sample_images`` draws for it."""
    from textcraftor.dials import dial_images
    from textcraftor.eval_images import eval_noise_seed
    from textcraftor.generation import sample_images

    trainer = make_trainer(f"sample.eta={eta}", "sample.num_steps=5", "sample.k=2")
    with torch.no_grad():  # a tuned encoder that differs from the original
        for parameter in trainer.pipeline.text_encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    seeds = [eval_noise_seed(0, p) for p in prompts]
    settings = dial_settings([0, 0.5, 1], ["k_train", 3, "all"], trainer.config.sample)
    assert len(settings) == 7
    drawn = dial_images(trainer, prompts, seeds, settings)
    assert set(drawn) == set(settings)
    for setting in settings:
        expected = sample_images(trainer.pipeline, trainer.pipeline.text_encoder,
                                 trainer.tokens, prompts, seeds, trainer.config.sample,
                                 alpha=setting.alpha, finetuned_steps=setting.finetuned_steps)
        assert torch.equal(drawn[setting], expected), setting
    # the settings differ from each other: the test could fail
    assert not torch.equal(drawn[DialSetting(1.0, 5)], drawn[DialSetting(1.0, 2)])
    assert not torch.equal(drawn[DialSetting(0.0, 5)], drawn[DialSetting(0.5, 5)])


def test_every_setting_is_evaluated_like_the_run_and_its_own_point_reused(make_trainer):
    """``measure_dials`` after an evaluation at this step: the (a = 1, M = T) point is that
    evaluation, the others are the evaluation of their images (``trainer.evaluate`` at that
    a and M gives the same metrics)."""
    from textcraftor.dials import measure_dials

    trainer = make_trainer("eval.diversity=true", "data.eval_seeds=[0, 1]")
    with torch.no_grad():
        for parameter in trainer.pipeline.text_encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    trainer._evaluate_and_report()
    table = measure_dials(trainer, [0, 0.5, 1], ["k_train", "all"])
    assert (table["step"], table["num_steps"]) == (0, 4) and table["wall_s"] > 0
    by_setting = {(p["alpha"], p["finetuned_steps"]): p for p in table["points"]}
    assert set(by_setting) == {(0.0, 4), (0.5, 2), (0.5, 4), (1.0, 2), (1.0, 4)}
    assert by_setting[(1.0, 4)]["metrics"] is not None
    assert by_setting[(1.0, 4)]["metrics"] == trainer.last_eval.metrics
    # another setting, measured again the long way (trainer.evaluate at that a, all steps):
    # the same images, so the same metrics
    again = trainer.evaluate(alpha=0.5).metrics
    assert set(by_setting[(0.5, 4)]["metrics"]) == set(again)
    for name, value in again.items():
        assert by_setting[(0.5, 4)]["metrics"][name] == pytest.approx(value, abs=1e-6), name
    assert by_setting[(0.5, 4)]["metrics"] != by_setting[(0.5, 2)]["metrics"]
    for point in table["points"]:
        rows = point["table"]["prompts"]
        assert len(rows) == 2 and len(point["table"]["seeds"]) == 2
        assert "eval/fid" not in point["metrics"]  # no KID/FID per setting
    # no quality here (the run has no eval.quality_weights): alignment (the CLIP score) leads
    objectives = study_dials(table, ["alignment", "diversity"])
    assert objectives["num_points"] == 5 and objectives["best"] is not None


def _row(alpha, steps, quality, alignment, shift=0.0):
    """A dial point over 4 prompts × 2 seeds: quality and alignment per image, each a constant
    plus a small per-image spread (so intervals are finite and narrow)."""
    spread = [[0.01 * (p + s) for s in range(2)] for p in range(4)]
    return {"alpha": alpha, "finetuned_steps": steps,
            "quality": quality, "alignment": alignment,
            "quality_ci_low": quality - 0.1, "quality_ci_high": quality + 0.1,
            "alignment_ci_low": alignment - 0.1, "alignment_ci_high": alignment + 0.1,
            "table": {"seeds": [0, 1], "prompts": [{"prompt": f"p{i}"} for i in range(4)],
                      "per_seed": {
                          "quality": [[quality + v for v in row] for row in spread],
                          "alignment": [[alignment + shift + v for v in row]
                                        for row in spread]}}}


def test_the_best_setting_is_the_most_quality_not_worse_than_untuned_elsewhere():
    objectives = ["quality", "alignment"]
    rows = [_row(0.0, 10, 60.0, 0.50),  # the untuned model
            _row(1.0, 10, 66.0, 0.20),  # the trial: most quality, alignment lost
            _row(0.5, 10, 63.0, 0.50),  # as aligned as the untuned model, more quality
            _row(1.0, 5, 64.0, 0.45)]   # more quality still, but alignment measurably lower
    best = best_setting(rows, objectives, num_steps=10)
    assert (best["alpha"], best["finetuned_steps"]) == (0.5, 10)
    assert best["vs_untuned"]["alignment"]["verdict"] == "indistinguishable"
    assert best["vs_own"]["quality"]["difference"] == pytest.approx(-3.0)
    assert best["vs_own"]["quality"]["verdict"] == "worse"
    assert best["vs_own"]["alignment"]["difference"] == pytest.approx(0.30)
    assert best["vs_own"]["alignment"]["verdict"] == "better"
    # when every tuned setting loses alignment, the untuned model is the best setting
    best = best_setting([rows[0], rows[1], rows[3]], objectives, num_steps=10)
    assert (best["alpha"], best["finetuned_steps"]) == (0.0, 10)
    # with quality alone, the most quality wins
    best = best_setting(rows, ["quality"], num_steps=10)
    assert (best["alpha"], best["finetuned_steps"]) == (1.0, 10)
    # no untuned point: no best setting
    assert best_setting(rows[1:], objectives, num_steps=10) is None
    assert math.isfinite(best_setting(rows, objectives, 10)["vs_own"]["quality"]["ci_low"])


@pytest.mark.parametrize(("override", "message"), [
    ("dials.alphas=[0, 1.5]", r"dials.alphas\[1\]: 1.5 lies outside \[0, 1\]"),
    ("dials.alphas=[-0.1]", r"dials.alphas\[0\]: -0.1 lies outside \[0, 1\]"),
    ("dials.finetuned_steps=[0]", r"dials.finetuned_steps\[0\]: 0 is not an int >= 1"),
    ("dials.finetuned_steps=[11]", r"dials.finetuned_steps\[0\]: 11 lies outside \[1, T\] "
                                   r"for T = sample.num_steps = 10"),
    ("dials.finetuned_steps=[most]", r"dials.finetuned_steps\[0\]: 'most' is not one of"),
    ("dials.finetuned_steps=[]", "dials.finetuned_steps: empty"),
])
def test_a_bad_dial_grid_is_named_before_any_trial(override, message):
    with pytest.raises(ConfigError, match=message):
        load_study_config(overrides=[override])


def test_dial_steps_are_checked_against_the_lowest_searched_t_and_k_train_against_direct(
        tmp_path):
    import yaml

    from study.config import default_config_path

    data = yaml.safe_load(default_config_path().read_text())
    data["search"]["sample.num_steps"] = {"low": 6, "high": 10}
    data["dials"] = {"finetuned_steps": [8]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"8 lies outside \[1, T\] for T = sample.num_steps "
                                          r"= 6 \(the lowest the search draws\)"):
        load_study_config(path)
    assert load_study_config(path, ["dials.finetuned_steps=[6, all]"]).dials.finetuned_steps \
        == (6, "all")
    with pytest.raises(ConfigError, match="k_train: truncation direct trains no DDIM chain"):
        load_study_config(overrides=["base.sample.truncation=direct", "search={train.lr: "
                                     "{low: 1.0e-5, high: 1.0e-4}}"])
    assert not load_study_config(overrides=["dials.alphas=[]"]).dials.enabled
