"""The gradient estimators beside last_k, counted on the UNet's calls (hooks of test_sampler):
the gradient window, DRaFT-LV's n + 1 gradient calls, DRTune's sparse steps with no gradient
through the UNet's input, and what each step reports of its cost."""

from __future__ import annotations

import random

import pytest
import torch
from unet_calls import UNetCalls, grad_pattern

from textcraftor.config import ConfigError, SampleConfig, load_run_config
from textcraftor.sampler import (
    SampleNoise,
    Truncation,
    denoise,
    draw_truncation,
    drtune_steps,
    guidance_context,
)

PROMPTS = ["a red cube on a wooden table", "an astronaut riding a horse"]
SEEDS = [11, 12]

def overrides(truncation: str, t: int, checkpointing: bool = False, **values) -> list[str]:
    return [f"sample.num_steps={t}", f"sample.truncation={truncation}",
            f"sample.checkpointing={str(checkpointing).lower()}",
            *(f"sample.{k}={v}" for k, v in values.items())]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_window_carries_gradient_from_first_to_last_and_ends_there(make_trainer, monkeypatch,
                                                                   checkpointing):
    t, first, last = 6, 1, 3
    trainer = make_trainer(*overrides("window", t, checkpointing, window_first=first,
                                      window_last=last))
    unet = UNetCalls(trainer, monkeypatch)
    metrics = trainer.train_step(1)
    forward, backward = unet.take()
    assert len(forward) == last + 1  # the chain ends at the window's last step (x̂0 there)
    if checkpointing:
        assert not any(grad_pattern(forward[:first]))
        assert len(backward) == last - first + 1
        # recomputed latest first: the UNet's input carries gradient from the window's second
        # step on (the chain inside the window is differentiated through)
        assert [c.input_grad for c in backward] == [True] * (last - first) + [False]
    else:
        assert grad_pattern(forward) == [False] * first + [True] * (last - first + 1)
        assert backward == []
        assert [c.input_grad for c in forward] == [False] * (first + 1) + [True] * (last - first)
    assert metrics["train/k_drawn"] == last - first + 1
    assert metrics["train/unet_calls"] == last + 1
    assert metrics["train/unet_grad_calls"] == last - first + 1


def test_window_to_the_last_step_is_last_k(make_trainer):
    t, k = 4, 2
    window = make_trainer(*overrides("window", t, window_first=t - k))
    last_k = make_trainer(*overrides("last_k", t, k=k))
    results = []
    for trainer in (window, last_k):
        truncation = draw_truncation(trainer.config.sample, random.Random(0))
        loss, _ = trainer.forward_loss(PROMPTS, SEEDS, truncation)
        loss.backward()
        results.append((truncation, loss.detach(),
                        [p.grad for p in trainer.pipeline.text_encoder.parameters()]))
    (tw, lw, gw), (tk, lk, gk) = results
    assert tw == tk == Truncation((2, 3), 3)
    assert torch.equal(lw, lk)
    for a, b in zip(gw, gk):
        assert torch.equal(a, b)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_draft_lv_has_n_plus_one_gradient_calls_on_the_renoised_final_sample(
        make_trainer, monkeypatch, n):
    t = 4
    trainer = make_trainer(*overrides("draft_lv", t, draft_lv_renoise=n))
    unet = UNetCalls(trainer, monkeypatch)
    truncation = draw_truncation(trainer.config.sample, random.Random(0))
    loss, scores = trainer.forward_loss(PROMPTS, SEEDS, truncation)
    forward, _ = unet.take()
    # the chain (T calls, only the last with gradient), then n re-noisings, each with gradient
    assert grad_pattern(forward) == [False] * (t - 1) + [True] * (n + 1)
    last_timestep = forward[t - 1].timestep
    assert all(c.timestep == last_timestep for c in forward[t:])  # re-noised to t_1
    assert not any(c.input_grad for c in forward[t:])  # each from sg(x_0)
    assert scores["aesthetic"].shape == ((n + 1) * len(PROMPTS),)
    loss.backward()
    assert all(p.grad is not None for p in trainer.pipeline.text_encoder.parameters())
    assert truncation.grad_calls() == n + 1 and truncation.unet_calls() == t + n


def test_draft_lv_renoisings_differ_and_follow_each_samples_seed(make_trainer):
    trainer = make_trainer(*overrides("draft_lv", 4, draft_lv_renoise=2))
    truncation = draw_truncation(trainer.config.sample, random.Random(0))
    with torch.no_grad():
        _, both = trainer.forward_loss(PROMPTS, SEEDS, truncation)
        _, alone = trainer.forward_loss(PROMPTS[1:], SEEDS[1:], truncation)
    scores = both["aesthetic"].view(3, 2)  # [n + 1, B]: chain, re-noising 1, re-noising 2
    assert len(set(scores[:, 1].tolist())) == 3  # three different images of one prompt
    torch.testing.assert_close(scores[:, 1], alone["aesthetic"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_drtune_has_no_gradient_through_the_unet_input_and_k_sparse_steps(
        make_trainer, monkeypatch, checkpointing):
    t, k = 8, 2
    trainer = make_trainer(*overrides("drtune", t, checkpointing, drtune_k=k))
    unet = UNetCalls(trainer, monkeypatch)
    offsets = set()
    for step in range(1, 6):
        metrics = trainer.train_step(step)
        forward, backward = unet.take()
        assert len(forward) == t  # stop ratio 0: the whole chain
        assert not any(c.input_grad for c in forward)  # ε_θ(sg(x_t)) at every call
        if not checkpointing:
            grads = [i for i, c in enumerate(forward) if c.grad]
            offset = grads[0]
            assert grads == list(drtune_steps(t, k, offset, t - 1))
            assert 0 <= offset < t // k
            offsets.add(offset)
            assert metrics["train/k_drawn"] == len(grads)
        else:  # the recomputed calls are the gradient steps, one each
            assert len(backward) == metrics["train/unet_grad_calls"]
            assert all(not c.input_grad for c in backward)
        assert metrics["train/unet_calls"] == t
    if not checkpointing:
        assert len(offsets) > 1  # the offset is drawn per batch


def test_drtune_gradient_reaches_earlier_steps_along_the_linear_path(make_trainer):
    """Only the first sparse step's UNet call sees the trained encoder's context with gradient
    when the later ones are fed a detached context: the encoder still gets gradient, through
    x_{t−1} = a·x_t + b·ε (the DDIM step is linear in x_t)."""
    t = 8
    trainer = make_trainer(*overrides("drtune", t, drtune_k=1))
    truncation = Truncation((0, t - 1), t - 1, x0_at_last=True, detach_unet_input=True)
    pipe = trainer.pipeline
    ids = trainer.tokens(PROMPTS)
    context = guidance_context(pipe.text_encoder, ids, trainer.empty_ids, 7.5)
    noise = SampleNoise(SEEDS)
    x0 = denoise(pipe.unet, pipe.scheduler, noise.draw(trainer.latent_shape), context,
                 context.detach(), 1, truncation, 7.5, checkpointing=False)
    x0.square().mean().backward()
    grads = [p.grad for p in pipe.text_encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_drtune_early_stop_shortens_the_chain(make_trainer, monkeypatch):
    t = 8
    trainer = make_trainer(*overrides("drtune", t, drtune_k=2, drtune_stop_ratio=0.5))
    unet = UNetCalls(trainer, monkeypatch)
    lengths = set()
    for step in range(1, 9):
        metrics = trainer.train_step(step)
        forward, _ = unet.take()
        assert t - 4 <= len(forward) <= t  # stop among the last ⌈0.5·8⌉ = 4 steps
        assert forward[-1].grad  # the stop step predicts x̂0 with gradient
        assert metrics["train/unet_calls"] == len(forward)
        lengths.add(len(forward))
    assert len(lengths) > 1


def test_drtune_steps_are_evenly_spaced_with_the_stop_step():
    assert drtune_steps(20, 4, 2, 19) == (2, 7, 12, 17, 19)
    assert drtune_steps(20, 4, 0, 10) == (0, 5, 10)
    assert drtune_steps(20, 20, 0, 19) == tuple(range(20))
    for offset in range(5):
        steps = drtune_steps(20, 4, offset, 19)
        assert set(steps) == {offset + 5 * j for j in range(4)} | {19}  # 4 steps at offset 4


@pytest.mark.parametrize("values, field, words", [
    ({"truncation": "window", "window_first": 6}, "sample.window_first", "[0, num_steps=6)"),
    ({"truncation": "window", "window_first": -1}, "sample.window_first", "[0, num_steps=6)"),
    ({"truncation": "window", "window_first": 3, "window_last": 2}, "sample.window_last",
     "window_first=3"),
    ({"truncation": "window", "window_last": 6}, "sample.window_last", "num_steps=6"),
    ({"truncation": "drtune", "drtune_k": 7}, "sample.drtune_k", "[1, num_steps=6]"),
    ({"truncation": "drtune", "drtune_k": 0}, "sample.drtune_k", "[1, num_steps=6]"),
    ({"truncation": "drtune", "drtune_stop_ratio": 1.5}, "sample.drtune_stop_ratio", "[0, 1]"),
    ({"truncation": "draft_lv", "draft_lv_renoise": 0}, "sample.draft_lv_renoise", ">= 1"),
    ({"truncation": "policy_gradient", "eta": 0.0}, "sample.eta", "log-probability"),
    ({"truncation": "last_k", "drtune_k": 3}, "sample.drtune_k", "sample.truncation=drtune"),
    ({"truncation": "drtune", "window_first": 2}, "sample.window_first",
     "sample.truncation=window"),
    ({"truncation": "window", "draft_lv_renoise": 4}, "sample.draft_lv_renoise",
     "sample.truncation=draft_lv"),
])
def test_estimator_fields_are_checked_naming_the_field(values, field, words):
    with pytest.raises(ConfigError) as error:
        SampleConfig(num_steps=6, **values)
    assert str(error.value).startswith(field + ":")
    assert words in str(error.value)


def test_a_field_of_another_estimator_names_this_runs_estimator():
    with pytest.raises(ConfigError, match=r"sample.drtune_stop_ratio: 0.5 applies to "
                                          r"sample.truncation=drtune only; this run's "
                                          r"estimator is window"):
        load_run_config(overrides=["sample.truncation=window",
                                   "sample.drtune_stop_ratio=0.5"])


ESTIMATOR_SEARCH = ("search={sample.truncation: {choices: [last_k, drtune, window]}, "
                    "sample.k: {low: 1, high: 5}, sample.drtune_k: {low: 1, high: 4}, "
                    "sample.drtune_stop_ratio: {low: 0.0, high: 0.5}, "
                    "sample.window_first: {low: 0, high: 4}}")


def test_a_study_suggests_an_estimators_fields_only_in_its_trials(tmp_path):
    """Optuna's conditional space: drtune_k is drawn only by the trials that run drtune, and
    every drawn trial is a valid run config (a field of another estimator would be refused)."""
    import optuna

    from study.config import load_study_config
    from study.space import DefineByRun, reference_point, trial_run_config

    study = load_study_config(overrides=[ESTIMATOR_SEARCH])
    assert reference_point(study) == {"sample.truncation": "last_k", "sample.k": 5}
    space = DefineByRun(study)
    sampler = optuna.samplers.RandomSampler(seed=0)
    trials = optuna.create_study(sampler=sampler)
    seen = set()
    for _ in range(30):
        trial = trials.ask()
        space(trial)
        estimator = trial.params["sample.truncation"]
        seen.add(estimator)
        own = {"drtune": {"sample.drtune_k", "sample.drtune_stop_ratio"},
               "window": {"sample.window_first"}, "last_k": set()}[estimator]
        assert set(trial.params) == {"sample.truncation", "sample.k"} | own
        run = trial_run_config(study, trial.params, tmp_path / "t")
        assert run.sample.truncation == estimator
        if estimator == "drtune":
            assert run.sample.drtune_k == trial.params["sample.drtune_k"]
        trials.tell(trial, 0.0)
    assert seen == {"last_k", "drtune", "window"}


def test_a_study_with_a_base_estimator_field_runs_other_estimators_at_their_defaults(tmp_path):
    import yaml

    from study.config import default_config_path, load_study_config
    from study.space import reference_point, trial_run_config

    data = yaml.safe_load(default_config_path().read_text())
    data["base"]["sample"].update(truncation="drtune", drtune_k=3)
    data["search"] = {"sample.truncation": {"choices": ["drtune", "last_k"]},
                      "sample.drtune_k": {"low": 1, "high": 4}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    study = load_study_config(path)
    assert reference_point(study) == {"sample.truncation": "drtune", "sample.drtune_k": 3}
    run = trial_run_config(study, {"sample.truncation": "last_k"}, tmp_path / "t")
    assert run.sample.truncation == "last_k" and run.sample.drtune_k == 5  # the default


def test_a_searched_field_of_an_estimator_the_study_never_runs_is_refused():
    from study.config import load_study_config

    with pytest.raises(ConfigError, match=r"search.sample.drtune_k: only "
                                          r"sample.truncation=drtune reads it, which this study "
                                          r"never runs \(base.sample.truncation=last_k, not "
                                          r"searched\)"):
        load_study_config(overrides=["search={sample.k: {low: 1, high: 5}, "
                                     "sample.drtune_k: {low: 1, high: 4}}"])


@pytest.mark.parametrize("estimator, values, per_step", [
    # B = 2, T = 4, checkpointing: forward calls + 2 per gradient call (backward, recompute)
    ("last_k", {"k": 2}, 2 * (4 + 2 * 2)),
    ("draft_lv", {"draft_lv_renoise": 2}, 2 * (4 + 2 + 2 * 3)),
    ("window", {"window_first": 1, "window_last": 2}, 2 * (3 + 2 * 2)),
])
def test_unet_passes_are_counted_per_latent(make_trainer, estimator, values, per_step):
    trainer = make_trainer(*overrides(estimator, 4, True, **values))
    first = trainer.train_step(1)
    second = trainer.train_step(2)
    assert first["train/unet_passes"] == second["train/unet_passes"] == per_step
    assert second["train/unet_passes_total"] == 2 * per_step == trainer.unet_passes


def test_policy_gradient_passes_count_rollouts_and_trained_steps(make_trainer):
    trainer = make_trainer("sample.num_steps=4", "sample.truncation=policy_gradient",
                           "sample.eta=1.0", "policy.samples_per_prompt=2",
                           "policy.timestep_fraction=0.5")
    metrics = trainer.train_step(1)
    images = 2 * 2  # batch 2 × 2 samples per prompt
    trained = metrics["train/k_drawn"]
    assert metrics["train/unet_grad_calls"] == trained
    assert metrics["train/unet_calls"] == 4 + trained
    assert metrics["train/unet_passes"] == images * (4 + 2 * trained)


def test_a_unet_pass_budget_ends_training_where_it_is_spent_and_survives_a_resume(
        make_trainer, tmp_path):
    from textcraftor.checkpoint import checkpoint_dir

    # last_k K = 2 of T = 4, B = 2, checkpointing: 16 passes a step; 40 are spent at step 3
    run = (*overrides("last_k", 4, True, k=2), "train.unet_pass_budget=40",
           "train.save_every=1", "train.eval_every=0", "train.keep_checkpoints=5",
           f"output_dir={tmp_path / 'run'}")
    events = []
    trainer = make_trainer(*run, "train.steps=10", callback=events.append)
    trainer.fit()
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3]
    assert [e.step for e in events if e.kind == "eval"] == [3]  # the final evaluation
    assert trainer.finished() and trainer.unet_passes == 48

    resumed_events = []
    resumed = make_trainer(*run, "train.steps=10", callback=resumed_events.append)
    resumed.restore(checkpoint_dir(trainer.run_dir, 2))
    assert resumed.unet_passes == 32  # from the checkpoint
    resumed.fit()
    assert [e.step for e in resumed_events if e.kind == "step"] == [3]


def test_a_negative_budget_is_refused():
    with pytest.raises(ConfigError, match=r"train.unet_pass_budget: must be >= 0 \(0 = off\), "
                                          r"got -1"):
        load_run_config(overrides=["train.unet_pass_budget=-1"])


def test_a_grid_study_draws_each_estimator_once_per_repeat():
    """tuner.sampler grid (Optuna's GridSampler) over study/configs/estimators.yaml's
    estimators: every combination once, in some order."""
    import optuna

    from study.config import grid_points, load_study_config
    from study.grid import TuneGridSampler
    from study.space import DefineByRun

    study = load_study_config("study/configs/estimators.yaml")
    estimators = list(study.search["sample.truncation"].choices)
    assert study.tuner.num_samples == len(estimators)
    space = DefineByRun(study)
    # ask and tell, as Tune's OptunaSearch does (Optuna's own GridSampler raises at the last
    # tell: it stops the study, which only works inside Study.optimize)
    trials = optuna.create_study(sampler=TuneGridSampler(grid_points(study.search), seed=0))
    drawn = []
    for _ in estimators:
        trial = trials.ask()
        space(trial)
        drawn.append(trial.params["sample.truncation"])
        trials.tell(trial, 0.0)
    assert sorted(drawn) == sorted(estimators)


@pytest.mark.parametrize("override, message", [
    ("tuner.num_samples=5", "tuner.num_samples: tuner.sampler grid has 6 combinations"),
    ("tuner.reference_first=true", "tuner.reference_first: sampler grid visits every"),
    ("search={sample.truncation: {choices: [last_k, drtune]}, sample.k: {low: 1, high: 5}}",
     "search.sample.k: tuner.sampler grid needs choices"),
    ("search={sample.truncation: {choices: [last_k, drtune]}, sample.drtune_k: {choices: [2]}}",
     "search.sample.drtune_k: tuner.sampler grid: only sample.truncation=drtune reads it"),
])
def test_a_grid_study_is_checked_naming_the_field(override, message):
    from study.config import load_study_config

    with pytest.raises(ConfigError) as error:
        load_study_config("study/configs/estimators.yaml", [override])
    assert message in str(error.value)


def test_the_estimators_reading_names_each_method_with_its_cost_and_verdicts():
    import math

    import pandas as pd

    from analysis.estimators import estimator_of_run, estimators_reading

    assert estimator_of_run({"method": "noise_opt", "estimator": "last_k"}) == "noise_opt"
    assert estimator_of_run({"sample.truncation": "drtune", "estimator": "last_k"}) == "drtune"
    assert estimator_of_run({"estimator": "policy_gradient"}) == "policy_gradient"
    row = {"sweep": "estimators", "repeats": 2, "prompts": 32, "level": 1.0,
           "level_ci_low": 0.5, "level_ci_high": 1.5, "baseline": 0.0, "unet_passes": 4800.0,
           "peak_memory_bytes": math.nan}
    table = pd.DataFrame([
        {**row, "estimator": "drtune", "score": "quality", "gain": 1.5, "gain_ci_low": 0.2,
         "gain_ci_high": 2.8, "steps": 57.0, "train_s": 80.0},
        {**row, "estimator": "drtune", "score": "diversity", "gain": -0.1, "gain_ci_low": -0.2,
         "gain_ci_high": -0.01, "steps": 57.0, "train_s": 80.0},
        {**row, "estimator": "noise_opt", "score": "quality", "gain": 0.3, "gain_ci_low": -0.4,
         "gain_ci_high": 1.0, "steps": math.nan, "train_s": 290.0, "repeats": 1}])
    text = estimators_reading(table)
    assert ("**drtune** (estimators; N = 2 repeats × 32 prompts; 57 steps, 4800 UNet passes, "
            "80 s of training): quality +1.5 [+0.2, +2.8] (better); diversity -0.1 [-0.2, "
            "-0.01] (worse).") in text
    assert ("**noise_opt** (estimators; N = 1 repeats × 32 prompts; 4800 UNet passes, 290 s of "
            "optimisation): quality +0.3 [-0.4, +1] (indistinguishable).") in text


def test_each_estimator_against_last_k_is_a_difference_of_groups_on_shared_prompts():
    """analysis.estimators.differences_between: per estimator and score, the mean over prompts
    of its repeats' mean minus last_k's, with the two-group interval; a score one table lacks
    or on other prompts is left out; no last_k, no rows."""
    import numpy as np
    import pandas as pd

    from analysis.estimators import differences_between, differences_reading
    from textcraftor.bootstrap import difference_of_groups

    rng = np.random.default_rng(0)
    prompt = rng.normal(0.0, 2.0, size=(8, 1))  # what every method's image of a prompt shares

    def table(shift: float, prompts: int = 8) -> dict:
        quality = prompt[:prompts] + shift + rng.normal(0.0, 0.05, size=(prompts, 2))
        return {"per_seed": {"quality": quality.tolist()},
                "prompts": [{"diversity": 0.1} for _ in range(prompts)]}

    tables = {"last_k": [table(0.0), table(0.0)], "window": [table(0.5), table(0.5)],
              "drtune": [table(0.5, prompts=6)]}
    rows = {(r["estimator"], r["score"]): r
            for r in differences_between(tables, "last_k", ("quality", "diversity", "clip"))}
    assert set(rows) == {("window", "quality"), ("window", "diversity")}  # drtune: 6 prompts
    window = rows["window", "quality"]
    mine = np.stack([np.mean(t["per_seed"]["quality"], axis=1) for t in tables["window"]], 1)
    theirs = np.stack([np.mean(t["per_seed"]["quality"], axis=1) for t in tables["last_k"]], 1)
    expected = difference_of_groups(mine, theirs)
    assert (window["difference"], window["ci_low"], window["ci_high"]) == (
        expected.mean, expected.low, expected.high)
    assert window["difference"] == pytest.approx(0.5, abs=0.1)
    assert window["verdict"] == "better" and window["ci_low"] > 0.3  # the prompts cancel
    assert (window["repeats"], window["reference_repeats"], window["prompts"]) == (2, 2, 8)
    assert rows["window", "diversity"]["difference"] == 0
    assert rows["window", "diversity"]["verdict"] == "indistinguishable"
    assert differences_between({"window": tables["window"]}, "last_k") == []
    text = differences_reading(pd.DataFrame([{"sweep": "estimators", **rows["window", "quality"]}]))
    assert text.startswith(f"- **window − last_k** (estimators; N = 2 vs 2 repeats × 8 "
                           f"prompts): quality {window['difference']:+.3g} "
                           f"[{window['ci_low']:+.3g}, {window['ci_high']:+.3g}] (better).")
    assert "No sweep has finished trials" in differences_reading(pd.DataFrame())
