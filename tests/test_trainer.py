"""The training loop: what a step may change, that it learns, checkpoints and resuming, the run
folder, and bad input caught before anything expensive happens."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from textcraftor import trainer as trainer_module
from textcraftor.checkpoint import (
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from textcraftor.configio import to_dict
from textcraftor.events import NonFiniteLossError
from textcraftor.trainer import TextCraftor


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def same(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    state = module.state_dict()
    return state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_step_changes_only_the_trainable_encoder(make_trainer):
    trainer = make_trainer("train.lr=1e-3")
    pipe = trainer.pipeline
    frozen = {"unet": pipe.unet, "vae": pipe.vae, "original": pipe.original_text_encoder,
              "rewards": trainer.objective}
    before = {name: snapshot(module) for name, module in frozen.items()}
    encoder_before = snapshot(pipe.text_encoder)
    metrics = trainer.train_step(1)
    for name, module in frozen.items():
        assert same(module, before[name]), f"{name} changed"
        assert not any(p.requires_grad for p in module.parameters()), name
    changed = [k for k, v in pipe.text_encoder.state_dict().items()
               if not torch.equal(v, encoder_before[k])]
    assert any(k.endswith("token_embedding.weight") for k in changed)
    assert any("layers.1." in k for k in changed)  # the last transformer layer too
    assert metrics["grad_norm"] > 0
    assert metrics["loss"] == pytest.approx(-3.0 * metrics["train/aesthetic"], rel=1e-5)


def test_fifty_steps_raise_the_reward_on_heldout_prompts(make_trainer):
    """Against one reward (tiny aesthetic), a fixed seed, all T steps with gradient.

    The tiny random reward is nearly flat (±0.0005 across images), hence the large lr. With
    these settings training seeds 0-3 all gained 0.0004-0.0006, at least 4× the change of a
    random move of the same size."""
    trainer = make_trainer("sample.k=4", "train.lr=3e-2", "data.heldout_count=4")
    start = snapshot(trainer.pipeline.text_encoder)
    before = trainer.evaluate().metrics["eval/aesthetic"]
    losses = [trainer.train_step(step)["loss"] for step in range(1, 51)]
    after = trainer.evaluate().metrics["eval/aesthetic"]
    gain = after - before
    assert gain > 0
    assert sum(losses[-10:]) < sum(losses[:10])  # the training loss falls too

    # Control: a random move of the same size per tensor does not do this — the gain comes
    # from following the reward's gradient, not from moving the weights at all.
    generator = torch.Generator().manual_seed(0)
    random_move = {}
    for name, tensor in trainer.pipeline.text_encoder.state_dict().items():
        delta = tensor - start[name]
        noise = torch.randn(delta.shape, generator=generator) if delta.is_floating_point() \
            else torch.zeros_like(delta)
        random_move[name] = start[name] + noise * delta.norm() / noise.norm().clamp_min(1e-12)
    trainer.pipeline.text_encoder.load_state_dict(random_move)
    random_gain = trainer.evaluate().metrics["eval/aesthetic"] - before
    assert gain > abs(random_gain)


def assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        assert state.keys() == b["state"][index].keys()
        for key, value in state.items():
            other = b["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


def test_checkpoint_round_trip_is_bit_exact(make_trainer):
    trainer = make_trainer("train.lr=1e-3")
    for step in (1, 2):
        trainer.train_step(step)
        trainer.step = step
    path = trainer.save()
    assert path == checkpoint_dir(trainer.run_dir, 2)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging left

    fresh = make_trainer("train.lr=1e-3")  # a fresh pipeline, as loaded from the preset
    assert not same(fresh.pipeline.text_encoder, snapshot(trainer.pipeline.text_encoder))
    fresh.restore(path)
    assert fresh.step == 2
    assert same(fresh.pipeline.text_encoder, snapshot(trainer.pipeline.text_encoder))
    assert_same_optimizer_state(fresh.optimizer.state_dict(), trainer.optimizer.state_dict())
    # the frozen original stays as loaded: a checkpoint holds only what trains
    assert same(fresh.pipeline.original_text_encoder,
                snapshot(trainer.pipeline.original_text_encoder))
    assert set(load_checkpoint(path).weights) == {"text_encoder"}


def test_save_checkpoint_keeps_the_newest(tmp_path):
    weights = {"text_encoder": {"w": torch.arange(4.0)}}
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, weights, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    loaded = load_checkpoint(checkpoint_dir(tmp_path, 4))
    assert loaded.step == 4 and torch.equal(loaded.weights["text_encoder"]["w"], torch.arange(4.0))
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "checkpoints" / "step_0000001")


def test_resumed_run_continues_with_the_same_next_loss(make_trainer):
    run = ("train.lr=1e-3", "train.steps=3", "train.save_every=2", "train.eval_every=0",
           "train.keep_checkpoints=5")
    events = []
    first = make_trainer(*run, callback=events.append)
    first.fit()
    step3 = next(e.metrics for e in events if e.kind == "step" and e.step == 3)
    assert [e.step for e in events if e.kind == "checkpoint"] == [2, 3]

    resumed_events = []
    second = make_trainer(*run, callback=resumed_events.append)
    second.restore(checkpoint_dir(first.run_dir, 2))
    second.fit()
    steps = [e for e in resumed_events if e.kind == "step"]
    assert [e.step for e in steps] == [3]  # continues at step 3, not from the start
    assert steps[0].metrics["loss"] == step3["loss"]  # bit-identical next loss
    assert steps[0].metrics["grad_norm"] == step3["grad_norm"]
    assert same(second.pipeline.text_encoder, snapshot(first.pipeline.text_encoder))
    # the log lists every step once: the resume replaced the steps after its checkpoint
    logged = [m["step"] for m in read_metrics(first.run_dir) if m["kind"] == "step"]
    assert logged == [1, 2, 3]


def test_fit_writes_the_run_folder(make_trainer):
    events = []
    trainer = make_trainer("train.steps=3", "train.save_every=1", "train.keep_checkpoints=2",
                           "train.eval_every=2", "train.eval_at_start=true",
                           "train.sample_grid=true", callback=events.append)
    final = trainer.fit()
    run = trainer.run_dir
    assert json.loads((run / "config.json").read_text()) == to_dict(trainer.config)
    metrics = read_metrics(run)
    assert [(m["kind"], m["step"]) for m in metrics] == [
        ("eval", 0), ("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("eval", 3)]
    assert all("loss" in m and "grad_norm" in m for m in metrics if m["kind"] == "step")
    assert all("eval/aesthetic" in m for m in metrics if m["kind"] == "eval")
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002", "step_0000003"]
    assert (run / "samples" / "step_0000003.png").is_file()
    assert [e.kind for e in events][-1] == "end"
    assert "baseline/aesthetic" in final and "eval/aesthetic" in final and "loss" in final


def test_nan_loss_stops_with_the_last_good_checkpoint(make_trainer):
    trainer = make_trainer("train.steps=5", "train.save_every=2", "train.inject_nan_at=3",
                           "train.eval_every=0", "train.lr=1e-3")
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit()
    good = checkpoint_dir(trainer.run_dir, 2)
    assert "step 3" in str(error.value)
    assert str(good) in str(error.value)
    assert list_checkpoints(trainer.run_dir) == [good]
    assert not checkpoint_dir(trainer.run_dir, 3).exists()
    assert not [p for p in good.parent.iterdir() if p.name.startswith(".")]
    checkpoint = load_checkpoint(good)
    assert checkpoint.step == 2
    # the NaN step did not update the weights: they are still those of the checkpoint
    weights = checkpoint.weights["text_encoder"]
    assert all(torch.equal(v, weights[k]) for k, v in
               trainer.pipeline.text_encoder.state_dict().items() if k in weights)
    assert trainer.step == 2
    assert [m["step"] for m in read_metrics(trainer.run_dir)] == [1, 2]


def test_fp16_overflow_is_the_loss_scalers_to_skip_and_a_nan_loss_still_stops(make_trainer):
    """torch.amp.GradScaler on the CPU, as on CUDA: its default scale (2^16) overflows the fp16
    gradients of the first step here; the step is skipped, the scale halved, and the run goes
    on. Before, the non-finite gradient norm stopped the run as if it had diverged."""
    trainer = make_trainer("model.mixed_precision=fp16", "train.steps=4", "train.lr=1e-3",
                           "train.eval_every=0")
    before = snapshot(trainer.pipeline.text_encoder)
    trainer.fit()
    steps = [m for m in read_metrics(trainer.run_dir) if m["kind"] == "step"]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]  # the run finished
    skipped = [m["amp/skipped_step"] for m in steps]
    scales = [m["amp/loss_scale"] for m in steps]
    assert skipped[0] == 1.0 and 0.0 in skipped, (skipped, scales)
    assert scales[1] == scales[0] / 2  # lowered after the overflow
    assert all(m["loss"] == m["loss"] for m in steps)
    after = trainer.pipeline.text_encoder.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not same(trainer.pipeline.text_encoder, before)  # the steps that were not skipped

    diverging = make_trainer("model.mixed_precision=fp16", "train.steps=3",
                             "train.inject_nan_at=2", "train.eval_every=0",
                             f"output_dir={trainer.run_dir}-nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at step 2"):
        diverging.fit()


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if TextCraftor starts loading the pipeline or the reward models."""

    def expensive(*args, **kwargs):
        raise AssertionError("models were loaded before the input was checked")

    monkeypatch.setattr(trainer_module, "load_pipeline", expensive)
    monkeypatch.setattr(trainer_module, "build_objective", expensive)


def construct(make_config, *overrides):
    config = make_config(*overrides)
    TextCraftor(config, device="cpu", show_progress=False)


def test_empty_prompt_file_fails_first(make_config, tmp_path, no_models):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="prompt file is empty"):
        construct(make_config, f"data.prompts={empty}")
    assert not (tmp_path / "run").exists()


def test_missing_prompt_file_fails_first(make_config, tmp_path, no_models):
    with pytest.raises(FileNotFoundError, match="prompt file not found: .*nope.txt"):
        construct(make_config, f"data.prompts={tmp_path / 'nope.txt'}")
    assert not (tmp_path / "run").exists()


def test_missing_reward_weights_fail_before_models_load(make_config, tmp_path, no_models):
    head = tmp_path / "missing" / "head.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(head))):
        construct(make_config, f"reward.sources={{aesthetic: {{source: {head}, "
                               f"backbone: {tmp_path}}}}}")
    assert not (tmp_path / "run").exists()


def test_missing_model_path_fails_before_rewards_load(make_config, tmp_path, monkeypatch):
    def expensive(*args, **kwargs):
        raise AssertionError("reward models were loaded before the model source was checked")

    monkeypatch.setattr(trainer_module, "build_objective", expensive)
    with pytest.raises(FileNotFoundError, match="model.source '/nonexistent'"):
        construct(make_config, "model.source=/nonexistent")
    assert not (tmp_path / "run").exists()


def test_long_prompts_warn_once_in_a_run(make_trainer, tmp_path, caplog):
    prompts = tmp_path / "long.txt"
    prompts.write_text("".join(f"{' '.join([word] * 90)}\n"
                               for word in ("castle", "forest", "river", "mountain", "city")))
    with caplog.at_level(logging.WARNING, logger="textcraftor.sampler"):
        trainer = make_trainer(f"data.prompts={prompts}")
        trainer.train_step(1)
        trainer.train_step(2)
        trainer.evaluate()
    warnings = [r for r in caplog.records
                if r.levelno >= logging.WARNING and r.name.startswith("textcraftor")]
    assert len(warnings) == 1
    assert "exceed 77 tokens and are truncated" in warnings[0].getMessage()


TRAIN = "textcraftor.train"


@pytest.fixture
def cli_args(small_overrides):
    """``cli_args(run_dir, *overrides)``: train CLI arguments for a small run."""

    def args(run_dir: Path, *extra: str) -> list[str]:
        return ["--output-dir", str(run_dir),
                *(a for o in (*small_overrides, *extra) for a in ("--set", o))]

    return args


def test_cli_refuses_to_overwrite_and_resumes_without_duplicates(run_module, cli_args, tmp_path):
    run = tmp_path / "run"
    done = run_module(TRAIN, *cli_args(run, "train.steps=3", "train.save_every=2",
                                       "train.keep_checkpoints=5", "train.eval_every=0"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output_dir"] == str(run)
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002", "step_0000003"]
    log_before = (run / "metrics.jsonl").read_text()

    again = run_module(TRAIN, *cli_args(run, "train.steps=4"))
    assert again.returncode == 2
    assert "--resume" in again.stderr and "step_0000003" in again.stderr
    assert (run / "metrics.jsonl").read_text() == log_before  # nothing touched

    # as if the run had died after logging step 3 but before its checkpoint was written
    for path in checkpoint_dir(run, 3).iterdir():
        path.unlink()
    checkpoint_dir(run, 3).rmdir()
    resumed = run_module(TRAIN, "--resume", *cli_args(run, "train.steps=4", "train.eval_every=0",
                                                      "train.keep_checkpoints=5"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "step 2" in resumed.stderr
    metrics = read_metrics(run)
    steps = [m["step"] for m in metrics if m["kind"] == "step"]
    evals = [m["step"] for m in metrics if m["kind"] == "eval"]
    assert steps == [1, 2, 3, 4]
    assert evals == [4]  # the first run's evaluation at step 3 was redone work: dropped
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002", "step_0000004"]


def test_cli_nan_exits_1_and_config_errors_exit_2(run_module, cli_args, tmp_path):
    run = tmp_path / "nan"
    nan = run_module(TRAIN, *cli_args(run, "train.steps=4", "train.save_every=2",
                                      "train.inject_nan_at=3", "train.eval_every=0"))
    assert nan.returncode == 1
    assert "non-finite loss" in nan.stderr and "step 3" in nan.stderr
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002"]
    assert load_checkpoint(checkpoint_dir(run, 2)).step == 2

    bad = run_module(TRAIN, *cli_args(tmp_path / "bad", "train.lerning_rate=1"))
    assert bad.returncode == 2
    assert "train.lerning_rate" in bad.stderr and "allowed under train" in bad.stderr
    assert bad.stdout == ""
    assert not (tmp_path / "bad").exists()
