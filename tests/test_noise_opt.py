"""Noise optimisation (ReNO): gradient into x_T alone, the loss falls, the regulariser is the
chi NLL, UNet calls counted, the run folder reads like a trainer's, bad input refused, and the
MLflow run is a trial the analysis reads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from textcraftor import noise_opt
from textcraftor.noise_opt import (
    NoiseOptOptions,
    chi_nll,
    expected_unet_calls,
    optimise_noise,
)
from textcraftor.sampler import PromptTokenizer, initial_noise, latent_shape

PROMPTS = ["a red cube", "a blue ball"]
SEEDS = [11, 12]
LR = 200.0  # select=best's test: iterates overshoot, sample 0's best is not its last



def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def optimise(pipeline, objective, config, **options):
    pipeline.scheduler.set_timesteps(config.sample.num_steps)
    tokens = PromptTokenizer(pipeline.tokenizer)
    return optimise_noise(pipeline, objective, tokens(PROMPTS), tokens([""])[0], PROMPTS,
                          SEEDS, config.sample, NoiseOptOptions(**options))


def test_gradient_reaches_x_t_only_and_unet_calls_are_counted(pipeline, objective, make_config):
    config = make_config()
    modules = {"text_encoder": pipeline.text_encoder, "unet": pipeline.unet,
               "vae": pipeline.vae, "original": pipeline.original_text_encoder,
               "rewards": objective}
    for module in modules.values():  # even trainable weights must get no gradient
        module.requires_grad_(True)
    before = {name: snapshot(m) for name, m in modules.items()}
    try:
        result = optimise(pipeline, objective, config, iterations=2)
        for name, module in modules.items():
            state = module.state_dict()
            assert all(torch.equal(state[k], v) for k, v in before[name].items()), name
            assert all(p.grad is None for p in module.parameters()), f"{name} got a .grad"
    finally:
        objective.requires_grad_(False)  # the session's shared objective stays frozen
    start = initial_noise(SEEDS, latent_shape(pipeline.vae, pipeline.unet, 32), "cpu")
    moved = (result.latents - start).flatten(1).norm(dim=1)
    assert (moved > 0).all()  # each sample's x_T got a gradient and stepped
    # each sample's gradient clipped to 0.1: Nesterov SGD (lr 5, momentum 0.9) moves it at
    # most 5·0.1·1.9 in step 1 and 5·0.1·(1 + 0.9·1.9) in step 2
    assert moved.max() <= 5 * 0.1 * (1.9 + 1 + 0.9 * 1.9) + 1e-4
    t = config.sample.num_steps
    assert result.unet_calls == expected_unet_calls(2, t, True) == 2 * t * 2 + t
    assert result.unet_latents == result.unet_calls * 2 * len(PROMPTS)  # guided: [2B] per call
    assert len(result.history) == 3
    plain = optimise(pipeline, objective, config, iterations=2, checkpointing=False)
    assert plain.unet_calls == expected_unet_calls(2, t, False) == 3 * t
    torch.testing.assert_close(plain.latents, result.latents, rtol=1e-4, atol=1e-5)


def test_a_sample_does_not_depend_on_its_batch_mates(pipeline, objective, make_config):
    config = make_config()
    pipeline.scheduler.set_timesteps(config.sample.num_steps)
    tokens = PromptTokenizer(pipeline.tokenizer)
    both = optimise(pipeline, objective, config, iterations=2)
    alone = optimise_noise(pipeline, objective, tokens(PROMPTS[:1]), tokens([""])[0],
                           PROMPTS[:1], SEEDS[:1], config.sample, NoiseOptOptions(iterations=2))
    torch.testing.assert_close(alone.latents[0], both.latents[0], rtol=1e-4, atol=1e-5)


def test_the_optimised_noise_lowers_the_loss(pipeline, objective, make_config):
    """On the tiny preset's aesthetic reward with ReNO's settings: every image's final loss is
    below its iteration-0 loss, and the reward itself rises."""
    result = optimise(pipeline, objective, make_config(), iterations=6)
    start, end = result.per_image["loss_start"], result.per_image["loss_end"]
    assert all(e < s for s, e in zip(start, end)), (start, end)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[-1]["aesthetic"] > result.history[0]["aesthetic"]


def test_best_selection_keeps_each_samples_lowest_reward_loss_iterate(pipeline, objective,
                                                                     make_config):
    """select=best (ReNO's): each sample ends with the iterate of lowest reward loss over
    iterations 0..N — checked against each iterate k, which a run of k iterations ends with
    (the optimisation is deterministic: a shorter run is a prefix of a longer one). At LR some
    iterate overshoots, so a choice before the last is exercised."""
    config, n = make_config(), 3
    best = optimise(pipeline, objective, config, iterations=n, lr=LR, select="best")
    finals = {k: optimise(pipeline, objective, config, iterations=k, lr=LR)
              for k in range(1, n + 1)}
    assert finals[n].per_image["selected_iteration"] == [n] * len(PROMPTS)
    start = initial_noise(SEEDS, latent_shape(pipeline.vae, pipeline.unet, 32), "cpu")
    for b in range(len(PROMPTS)):
        candidates = [best.per_image["reward_loss_start"][b]] + [
            finals[k].per_image["selected_reward_loss"][b] for k in range(1, n + 1)]
        chosen = best.per_image["selected_iteration"][b]
        assert best.per_image["selected_reward_loss"][b] == pytest.approx(min(candidates),
                                                                          abs=1e-6)
        assert candidates[chosen] == pytest.approx(min(candidates), abs=1e-6), candidates
        latents = start[b] if chosen == 0 else finals[chosen].latents[b]
        torch.testing.assert_close(best.latents[b], latents, rtol=1e-4, atol=1e-5)
        if chosen:
            torch.testing.assert_close(best.images[b], finals[chosen].images[b], rtol=1e-4,
                                       atol=1e-5)
    assert min(best.per_image["selected_iteration"]) < n  # not the last for every sample


def test_the_regulariser_is_the_chi_negative_log_likelihood():
    stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(0)
    for shape, scale in [((3, 4, 4, 4), 1.0), ((2, 4, 8, 8), 0.5), ((2, 1, 3, 3), 2.0)]:
        x = torch.randn(shape, dtype=torch.float64) * scale
        d = math.prod(shape[1:])
        r = x.flatten(1).norm(dim=1).numpy()
        expected = -stats.chi.logpdf(r, d)
        assert torch.allclose(chi_nll(x).double(), torch.as_tensor(expected), rtol=1e-5)
    # its gradient pulls x_T back toward the shell of radius sqrt(d - 1)
    d = 64
    for radius in (4.0, 12.0):
        x = torch.full((1, d), radius / 8, requires_grad=True)
        (grad,) = torch.autograd.grad(chi_nll(x).sum(), [x])
        outward = (grad * x).sum().item()
        assert (outward < 0) == (radius < math.sqrt(d - 1))


@pytest.mark.parametrize("option, value", [("--iterations", "0"), ("--lr", "0"),
                                           ("--lr", "nan"), ("--lr", "inf"),
                                           ("--reg-weight", "-0.1"), ("--grad-clip", "-1"),
                                           ("--optimizer", "lbfgs"), ("--select", "top")])
def test_bad_input_exits_2_naming_the_option_before_any_weights_load(
        option, value, tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the input was checked")

    monkeypatch.setattr("textcraftor.trainer.TextCraftor", no_loading)
    monkeypatch.setattr("textcraftor.models.load_pipeline", no_loading)
    code = noise_opt.main(["--out", str(tmp_path / "run"), option, value])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and option in err, err


EVAL_OVERRIDES = ("data.eval_seeds=[0,1]", "eval.diversity=true", "eval.distribution=true",
                  "train.eval_at_start=true", "eval.quality_weights={aesthetic: 1}")


@pytest.fixture(scope="module")
def noise_opt_run(tmp_path_factory):
    """One CLI run (in-process) on the tiny preset: 2 held-out prompts × 2 seeds, 2 iterations."""
    from conftest import SMALL

    out = tmp_path_factory.mktemp("noise") / "run"
    args = ["--out", str(out), "--iterations", "2", "--batch-size", "2"]
    for item in (*SMALL, *EVAL_OVERRIDES):
        args += ["--set", item]
    assert noise_opt.main(args) == 0
    return out


def read_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_run_folder_reads_like_a_trainers(noise_opt_run, make_trainer, capsys):
    lines = read_lines(noise_opt_run)
    evals = [m for m in lines if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [0, 2]
    trainer = make_trainer(*EVAL_OVERRIDES)
    expected = set(trainer.evaluate().metrics)
    for line in evals:
        assert set(line) - {"kind", "step"} == expected
    assert "eval/kd_random_features" in expected and "eval/diversity" in expected
    base, final = evals
    assert final["eval/fd_random_features"] > 0  # the optimised images differ from the base
    assert base["eval/fd_random_features"] == pytest.approx(0, abs=1e-3)
    cost = next(m for m in lines if m["kind"] == "cost")
    t = 4  # SMALL's num_steps; 4 images in 2 batches
    assert cost["cost/unet_calls"] == 2 * expected_unet_calls(2, t, True)
    assert cost["cost/images"] == 4 and cost["cost/wall_s"] > 0
    assert cost["cost/peak_memory_bytes"] is None  # CPU
    assert [m["step"] for m in lines if m["kind"] == "iteration"] == [0, 1, 2]
    config = json.loads((noise_opt_run / "config.json").read_text())
    from textcraftor.config import load_run_config

    assert load_run_config(None, base=config).sample.num_steps == t
    assert (noise_opt_run / "samples" / "step_0000002.png").is_file()
    table = json.loads((noise_opt_run / "eval" / "step_0000002.json").read_text())
    assert len(table["prompts"]) == 2 and table["seeds"] == [0, 1]
    assert torch.load(noise_opt_run / noise_opt.LATENTS_FILE).shape[0] == 4
    assert noise_opt.main(["--out", str(noise_opt_run)]) == 2  # never overwritten
    assert "--out" in capsys.readouterr().err


def test_the_mlflow_run_is_a_trial_the_analysis_reads(noise_opt_run, tmp_path):
    from analysis.runs import load_runs
    from study.noise_opt import METHOD_TAG, log_run_folder
    from study.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "exp", "sweep-a")
    run_id = log_run_folder(tracker, noise_opt_run)
    assert log_run_folder(tracker, noise_opt_run) == run_id  # logged again: the same run
    study = load_runs(uri, "exp")
    trials = study.trials
    assert len(trials) == 1
    row = trials.iloc[0]
    assert row["trial_id"] == "noise_opt-run" and row["status"] == "FINISHED"
    assert row["method"] == "noise_opt" and row["noise_opt.iterations"] == 2
    lines = read_lines(noise_opt_run)
    final = [m for m in lines if m["kind"] == "eval"][-1]
    assert row["quality"] == pytest.approx(final["eval/quality"])
    assert row["diversity"] == pytest.approx(final["eval/diversity"])
    assert row["alignment"] == pytest.approx(final["eval/alignment"])
    assert row["eval/quality"] == pytest.approx(final["eval/quality"])
    assert row["cost/unet_calls"] > 0 and bool(row["pareto"])  # the only finished trial
    assert row["model"] == "tiny"
    client = study.client()
    assert client.get_run(run_id).data.tags[METHOD_TAG] == "noise_opt"
    steps = study.steps[study.steps["key"] == "quality"]
    assert sorted(steps["step"]) == [0, 2]
    assert {a.path for a in client.list_artifacts(run_id, "eval")} == {
        "eval/step_0000000.json", "eval/step_0000002.json"}


def test_the_study_command_runs_and_logs_it_as_a_sweeps_trial(tmp_path, capsys):
    """``python -m study.noise_opt``: the study's held-out prompts, seeds and quality weights
    (study_run_config), the run folder under the sweep, a trial of that sweep in MLflow; bad
    input refused before anything runs."""
    from sweep_helpers import SMALL, TINY

    from analysis.runs import load_runs
    from study import noise_opt as study_noise_opt

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [*SMALL, *TINY, "--set", f"results_dir={tmp_path / 'sweeps'}",
              "--tracking-uri", uri]
    assert study_noise_opt.main([*common, "--iterations", "0"]) == 2
    assert "--iterations" in capsys.readouterr().err
    assert study_noise_opt.main([*common, "--iterations", "1", "--name", "one"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = tmp_path / "sweeps" / printed["sweep"] / "noise_opt" / "one"
    assert printed["run_dir"] == str(folder) and (folder / "config.json").is_file()
    study = load_runs(uri, "textcraftor-study")
    row = study.trials.iloc[0]
    assert row["trial_id"] == "noise_opt-one" and row["method"] == "noise_opt"
    assert math.isfinite(row["quality"])
    parent = study.client().get_run(study.client().get_run(row["run_id"]).data.tags[
        "mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert study_noise_opt.main([*common, "--iterations", "1", "--name", "one"]) == 2  # kept
