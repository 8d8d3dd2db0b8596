"""Truncated backpropagation through the DDIM chain, counted on the UNet's calls
(``unet_calls.UNetCalls``)."""

from __future__ import annotations

import logging
import random

import pytest
import torch
from unet_calls import UNetCalls, grad_pattern

from textcraftor.config import SampleConfig
from textcraftor.sampler import (
    PromptTokenizer,
    Truncation,
    draw_truncation,
    guidance_context,
    initial_noise,
    interpolate_context,
)

PROMPTS = ["a red cube on a wooden table", "an astronaut riding a horse"]
SEEDS = [11, 12]


def k_overrides(truncation: str, checkpointing: bool, **values) -> list[str]:
    return [f"sample.truncation={truncation}", f"sample.checkpointing={str(checkpointing).lower()}",
            *(f"sample.{k}={v}" for k, v in values.items())]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_last_k_only_the_last_k_unet_calls_carry_gradient(make_trainer, monkeypatch, k):
    t = 5
    trainer = make_trainer(f"sample.num_steps={t}", *k_overrides("last_k", False, k=k))
    unet = UNetCalls(trainer, monkeypatch)
    metrics = trainer.train_step(1)
    forward, backward = unet.take()
    assert grad_pattern(forward) == [False] * (t - k) + [True] * k
    assert backward == []  # nothing recomputed without checkpointing
    assert metrics["train/k_drawn"] == k


@pytest.mark.parametrize("k", [1, 3, 5])
def test_last_k_with_checkpointing_recomputes_exactly_k_calls(make_trainer, monkeypatch, k):
    t = 5
    trainer = make_trainer(f"sample.num_steps={t}", *k_overrides("last_k", True, k=k))
    unet = UNetCalls(trainer, monkeypatch)
    trainer.train_step(1)
    forward, backward = unet.take()
    assert len(forward) == t
    assert not any(grad_pattern(forward[: t - k]))
    assert len(backward) == k
    assert all(c.grad_enabled for c in backward)
    # the recomputations are of the last k calls (same conditioning, latest call first)
    for recomputed, original in zip(backward, reversed(forward[t - k:])):
        assert torch.equal(recomputed.context, original.context)


def test_random_k_draws_one_k_per_batch_within_bounds(make_trainer, monkeypatch):
    t, k_min, k_max = 6, 2, 5
    trainer = make_trainer(f"sample.num_steps={t}",
                           *k_overrides("random_k", False, k_min=k_min, k_max=k_max))
    unet = UNetCalls(trainer, monkeypatch)
    drawn = []
    for step in range(1, 7):
        metrics = trainer.train_step(step)
        forward, backward = unet.take()
        k = sum(grad_pattern(forward))
        # one K for the whole batch: a single block of the last K steps, none before
        assert grad_pattern(forward) == [False] * (t - k) + [True] * k
        assert k_min <= k <= k_max
        assert metrics["train/k_drawn"] == k
        drawn.append(k)
    assert len(set(drawn)) > 1  # K really varies between batches


def test_random_k_with_checkpointing_recomputes_the_drawn_k(make_trainer, monkeypatch):
    t = 6
    trainer = make_trainer(f"sample.num_steps={t}",
                           *k_overrides("random_k", True, k_min=1, k_max=6))
    unet = UNetCalls(trainer, monkeypatch)
    for step in range(1, 4):
        metrics = trainer.train_step(step)
        forward, backward = unet.take()
        assert len(forward) == t
        assert not any(grad_pattern(forward[: t - int(metrics["train/k_drawn"])]))
        assert len(backward) == metrics["train/k_drawn"]
        assert all(c.grad_enabled for c in backward)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_x0_shortcut_has_exactly_one_grad_call(make_trainer, monkeypatch, checkpointing):
    t, k_min, k_max = 6, 2, 4
    trainer = make_trainer(f"sample.num_steps={t}",
                           *k_overrides("x0_shortcut", checkpointing, k_min=k_min, k_max=k_max))
    unet = UNetCalls(trainer, monkeypatch)
    for step in range(1, 4):
        metrics = trainer.train_step(step)
        forward, backward = unet.take()
        # the chain stops at the grad step: T-K no-grad calls, then one that predicts x̂0
        assert t - k_max + 1 <= len(forward) <= t - k_min + 1
        if checkpointing:
            assert not any(grad_pattern(forward[:-1]))
            assert len(backward) == 1 and backward[0].grad_enabled
        else:
            assert grad_pattern(forward) == [False] * (len(forward) - 1) + [True]
            assert backward == []
        assert metrics["train/k_drawn"] == 1


def test_draw_truncation():
    rng = random.Random(0)
    assert draw_truncation(SampleConfig(num_steps=10, k=3), rng) == Truncation((7, 8, 9), 9)
    config = SampleConfig(num_steps=10, truncation="random_k", k_min=2, k_max=4)
    draws = [draw_truncation(config, rng) for _ in range(200)]
    assert {len(d.grad_steps) for d in draws} == {2, 3, 4}
    assert all(d.grad_steps == tuple(range(d.grad_from, 10)) and d.last == 9 for d in draws)
    assert not any(d.x0_at_last for d in draws)
    shortcut = SampleConfig(num_steps=10, truncation="x0_shortcut", k_min=2, k_max=4)
    draws = [draw_truncation(shortcut, rng) for _ in range(200)]
    assert {d.grad_from for d in draws} == {6, 7, 8}
    assert all(d.x0_at_last and d.grad_steps == (d.last,) for d in draws)


def perturb_(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Make a module's weights differ from the copy it was made from."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


class EncoderCalls:
    def __init__(self, encoder):
        self.grad_enabled: list[bool] = []
        encoder.register_forward_hook(
            lambda m, a, o: self.grad_enabled.append(torch.is_grad_enabled()))


@pytest.mark.parametrize("no_grad_encoder", ["original", "trainable"])
def test_no_grad_steps_use_the_chosen_encoder(make_trainer, monkeypatch, no_grad_encoder):
    t, k = 5, 2
    trainer = make_trainer(f"sample.num_steps={t}", *k_overrides("last_k", False, k=k),
                           f"sample.no_grad_encoder={no_grad_encoder}")
    pipe = trainer.pipeline
    perturb_(pipe.text_encoder)  # as after some training: the two encoders now differ
    with torch.no_grad():  # each encoder's context for the first batch, before the update
        ids = trainer.tokens([p.text for p in trainer.prompt_sampler.batch(0)])
        contexts = {name: guidance_context(encoder, ids, trainer.empty_ids, 7.5)
                    for name, encoder in [("original", pipe.original_text_encoder),
                                          ("trainable", pipe.text_encoder)]}
    assert not torch.equal(contexts["original"], contexts["trainable"])

    unet = UNetCalls(trainer, monkeypatch)
    original, trainable = EncoderCalls(pipe.original_text_encoder), EncoderCalls(pipe.text_encoder)
    trainer.train_step(1)
    forward, _ = unet.take()
    assert trainable.grad_enabled == [True]  # the trainable encoder never runs under no_grad
    assert original.grad_enabled == ([False] if no_grad_encoder == "original" else [])
    assert len(forward) == t
    for call in forward[: t - k]:
        assert torch.equal(call.context, contexts[no_grad_encoder])
    for call in forward[t - k:]:
        assert torch.equal(call.context, contexts["trainable"])


def test_k_equal_t_never_calls_the_original_encoder(make_trainer, monkeypatch):
    trainer = make_trainer("sample.num_steps=4", *k_overrides("last_k", False, k=4))
    unet = UNetCalls(trainer, monkeypatch)
    original = EncoderCalls(trainer.pipeline.original_text_encoder)
    trainer.train_step(1)
    forward, _ = unet.take()
    assert grad_pattern(forward) == [True] * 4
    assert original.grad_enabled == []


def test_gradient_reaches_only_the_text_encoder(make_trainer):
    trainer = make_trainer("sample.k=2", "sample.checkpointing=true")
    loss, scores = trainer.forward_loss(PROMPTS, SEEDS, Truncation.last_k(4, 2))
    assert loss.ndim == 0 and loss.requires_grad
    assert scores["aesthetic"].shape == (2,)
    loss.backward()
    pipe = trainer.pipeline
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in pipe.text_encoder.parameters())
    for frozen in (pipe.unet, pipe.vae, pipe.original_text_encoder, trainer.objective):
        assert all(p.grad is None for p in frozen.parameters())


def test_checkpointing_does_not_change_loss_or_gradient(make_trainer, load_tiny):
    results = []
    for checkpointing in ("true", "false"):
        trainer = make_trainer("sample.k=3", f"sample.checkpointing={checkpointing}")
        loss, _ = trainer.forward_loss(PROMPTS, SEEDS, Truncation.last_k(4, 3))
        loss.backward()
        grads = [p.grad.clone() for p in trainer.pipeline.text_encoder.parameters()]
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)


def test_long_prompts_are_truncated_with_one_warning(pipeline, caplog):
    tokens = PromptTokenizer(pipeline.tokenizer)
    long = [" ".join(["castle"] * 90), " ".join(["forest"] * 120)]
    with caplog.at_level(logging.WARNING, logger="textcraftor.sampler"):
        ids = tokens(long)
        tokens([long[0] + " again", "short prompt"])  # more long prompts later: no new warning
        tokens(long)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "exceed 77 tokens" in warnings[0].getMessage()
    assert ids.shape == (2, 77)
    assert (ids[:, 0] == 49406).all() and (ids[:, -1] == 49407).all()


def test_short_prompts_do_not_warn(pipeline, caplog):
    with caplog.at_level(logging.WARNING, logger="textcraftor.sampler"):
        ids = PromptTokenizer(pipeline.tokenizer)(PROMPTS)
    assert not caplog.records
    assert ids.shape == (2, 77)


def test_guidance_context_batches_uncond_and_cond(pipeline):
    tokens = PromptTokenizer(pipeline.tokenizer)
    ids, empty = tokens(PROMPTS), tokens([""])[0]
    encoder = pipeline.original_text_encoder
    with torch.no_grad():
        guided = guidance_context(encoder, ids, empty, 7.5)
        plain = guidance_context(encoder, ids, empty, 1.0)
        uncond = encoder(empty[None])[0]
    assert guided.shape == (4, 77, 32) and plain.shape == (2, 77, 32)
    torch.testing.assert_close(guided[2:], plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(guided[:2], uncond.expand(2, -1, -1), rtol=0, atol=1e-6)


def test_interpolate_context_is_exact_at_the_ends():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.equal(interpolate_context(a, b, 0.0), a)
    assert torch.equal(interpolate_context(a, b, 1.0), b)
    torch.testing.assert_close(interpolate_context(a, b, 0.25), 0.75 * a + 0.25 * b)


def test_initial_noise_depends_on_each_seed_only():
    both = initial_noise([3, 4], (4, 8, 8), "cpu")
    alone = initial_noise([4], (4, 8, 8), "cpu")
    assert both.shape == (2, 4, 8, 8)
    assert torch.equal(both[1], alone[0])
    assert not torch.equal(both[0], both[1])
