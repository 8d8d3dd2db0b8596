"""sample.truncation=policy_gradient: DDPO's PPO on the text encoder. The DDIM log-probability
against diffusers' own step, per-sample noise, per-prompt advantages, the first PPO epoch's
ratio of exactly 1, where gradient flows, a training step (tiny preset, and ShapesWorld with the
oracle's reward, which has no gradient), and the refused configurations."""

from __future__ import annotations

import math
import random

import pytest
import torch

from textcraftor.config import ConfigError, load_run_config
from textcraftor.models import sd15_scheduler
from textcraftor.policy_gradient import (
    ddim_sigma,
    ddim_step_log_prob,
    ddim_step_mean,
    per_prompt_advantages,
    ppo_loss,
    sample_trajectory,
    train_steps,
)
from textcraftor.sampler import SampleNoise

PG = ("sample.truncation=policy_gradient", "sample.eta=1.0", "policy.samples_per_prompt=2")


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_log_prob_is_the_normal_density_of_diffusers_ddim_step(eta):
    """diffusers' DDIMScheduler.step with given variance noise z returns μ + σ_t·z, and the
    log-probability is log N(x_{t−1}; μ, σ_t²I) summed over the latent dimensions."""
    scheduler = sd15_scheduler()
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 8, 8, generator=generator)
    for t in scheduler.timesteps:  # the last step goes to final_alpha_cumprod
        eps = torch.randn(latents.shape, generator=generator)
        z = torch.randn(latents.shape, generator=generator)
        prev = scheduler.step(eps, t, latents, eta=eta, variance_noise=z).prev_sample
        mean, sigma = ddim_step_mean(scheduler, eps, t, latents, eta), ddim_sigma(scheduler, t, eta)
        step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        assert sigma == pytest.approx(eta * scheduler._get_variance(t, t - step).item() ** 0.5,
                                      rel=1e-5)
        torch.testing.assert_close(prev, mean + sigma * z, rtol=1e-5, atol=1e-5)
        expected = torch.distributions.Normal(mean, sigma).log_prob(prev).flatten(1).sum(1)
        got = ddim_step_log_prob(scheduler, eps, t, latents, prev, eta)
        assert got.shape == (3,)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


def test_log_prob_is_refused_where_the_step_is_deterministic():
    scheduler = sd15_scheduler()
    scheduler.set_timesteps(4)
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="deterministic"):
        ddim_step_log_prob(scheduler, x, scheduler.timesteps[0], x, x, eta=0.0)


def test_each_trajectory_comes_from_its_own_seed(pipeline):
    """A sample's trajectory (x_T, every step's noise and log-prob) depends on its seed alone,
    and each recorded step is x_{t−1} = μ + σ_t·z."""
    pipeline.scheduler.set_timesteps(3)
    encoder_ids = pipeline.tokenizer(["a cat", "a dog", ""], padding="max_length",
                                     return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipeline.text_encoder(encoder_ids)[0]
    context = torch.cat([hidden[2:].expand(2, -1, -1), hidden[:2]])
    shape = (pipeline.unet.config.in_channels, 4, 4)
    both = sample_trajectory(pipeline.unet, pipeline.scheduler, context,
                             SampleNoise([11, 22]), shape, 3.0, 0.8)
    alone = sample_trajectory(pipeline.unet, pipeline.scheduler, context[1::2],
                              SampleNoise([22]), shape, 3.0, 0.8)
    assert both.latents.shape == (4, 2, *shape) and both.log_probs.shape == (3, 2)
    torch.testing.assert_close(both.latents[:, 1:], alone.latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both.noises[:, 1:], alone.noises)
    torch.testing.assert_close(both.log_probs[:, 1:], alone.log_probs, rtol=1e-5, atol=1e-3)
    assert not torch.equal(both.latents[0, 0], both.latents[0, 1])


def test_advantages_are_zero_mean_per_prompt_and_batch_normalised_for_lone_prompts():
    rewards = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0, 7.0])
    prompts = ["a", "a", "b", "b", "b", "lone"]
    advantages = per_prompt_advantages(rewards, prompts)
    for prompt in ("a", "b"):
        own = advantages[[i for i, p in enumerate(prompts) if p == prompt]]
        assert own.mean().item() == pytest.approx(0, abs=1e-6)
        assert own.std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    expected = (7.0 - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)
    assert advantages[-1].item() == pytest.approx(expected.item())
    same = per_prompt_advantages(torch.tensor([1.0, 1.0]), ["x", "x"])  # all right or all wrong
    assert torch.equal(same, torch.zeros(2))


def test_clipped_surrogate_and_timestep_subset():
    advantages = torch.tensor([1.0, -1.0])
    old = torch.tensor([-5.0, -5.0])
    loss, stats = ppo_loss(old.clone(), old, advantages, 0.1, dims=1)
    assert loss.item() == pytest.approx(-advantages.mean().item())
    assert stats["pg_clip_fraction"].item() == 0 and stats["approx_kl"].item() == 0
    # ratio e^0.5 > 1 + ε: a positive advantage gains nothing beyond the clip, a negative one
    # pays the full ratio (the pessimistic max)
    loss, stats = ppo_loss(old + 0.5, old, advantages, 0.1, dims=1)
    assert loss.item() == pytest.approx((-1.1 + math.exp(0.5)) / 2, rel=1e-6)
    assert stats["pg_clip_fraction"].item() == 1
    rng = random.Random(0)
    assert train_steps(10, 1.0, [True] * 10, rng) == list(range(10))
    chosen = train_steps(10, 0.3, [True] * 9 + [False], rng)
    assert len(chosen) == 3 and 9 not in chosen and chosen == sorted(chosen)
    assert len(train_steps(10, 0.01, [True] * 10, rng)) == 1


def test_first_ppo_epoch_has_ratio_one_and_gradient_reaches_only_the_encoder(make_trainer):
    """Before any update log p_new == log p_old exactly: ratio 1, nothing clipped, and the loss
    is −mean(A). Its gradient reaches the text encoder, never the UNet, VAE or rewards."""
    trainer = make_trainer(*PG)
    prompts = ["a red circle", "a red circle", "a blue square", "a blue square"]
    rollout = trainer.policy.rollout(prompts, [1, 2, 3, 4])
    trainer.policy.normalise([rollout])
    assert rollout.advantages.shape == (4,)
    for i in range(trainer.config.sample.num_steps):
        loss, stats = trainer.policy.step_loss(rollout, i)
        assert stats["approx_kl"].item() == 0 and stats["pg_clip_fraction"].item() == 0, i
        assert loss.item() == pytest.approx(-rollout.advantages.mean().item(), abs=1e-6)
    encoder = list(trainer.pipeline.text_encoder.parameters())
    for p in encoder:
        p.grad = None
    # a loss whose value is −mean(A) still carries the policy gradient −mean(A·∇log p)
    loss, _ = trainer.policy.step_loss(rollout, 1)
    loss.backward()
    assert sum(p.grad.abs().sum().item() for p in encoder if p.grad is not None) > 0
    frozen = [trainer.pipeline.unet, trainer.pipeline.vae, trainer.objective,
              trainer.pipeline.original_text_encoder]
    for module in frozen:
        assert all(p.grad is None for p in module.parameters()), type(module).__name__


def test_a_policy_gradient_step_trains_the_encoder(make_trainer):
    trainer = make_trainer(*PG, "policy.ppo_epochs=2", "policy.timestep_fraction=0.5",
                           "train.lr=1e-3")
    unet = {k: v.clone() for k, v in trainer.pipeline.unet.state_dict().items()}
    before = [p.detach().clone() for p in trainer.pipeline.text_encoder.parameters()]
    metrics = trainer.train_step(1)
    change = sum((a - b).abs().sum().item()
                 for a, b in zip(trainer.pipeline.text_encoder.parameters(), before))
    assert change > 0 and metrics["grad_norm"] > 0
    assert {"loss", "train/aesthetic", "train/pg_clip_fraction", "train/approx_kl"} <= set(metrics)
    assert metrics["train/k_drawn"] == 2  # half of T = 4
    assert metrics["train/approx_kl"] > 0  # the second epoch ran after an update
    for name, weight in trainer.pipeline.unet.state_dict().items():
        assert torch.equal(weight, unet[name]), name


def encoder_gradient_of_one_step(trainer) -> tuple[list[torch.Tensor], int]:
    """The text encoder's gradient as the optimizer is about to apply it, and the encoder's
    forward calls with gradient (the rollouts' run without), in ``train_step(1)``."""
    encoder = trainer.pipeline.text_encoder
    grads: list[torch.Tensor] = []
    calls: list[bool] = []

    def before_update(*_) -> None:
        grads.extend(p.grad.clone() for p in encoder.parameters() if p.grad is not None)

    encoder.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    trainer.optimizer.register_step_pre_hook(before_update)
    trainer.train_step(1)
    return grads, sum(calls)


def test_the_encoder_runs_once_per_micro_batch_and_epoch_with_the_same_gradient(make_trainer):
    """The trainer computes c_θ once for all the steps it trains on a rollout (the weights
    change only at the epoch's update) and sends their summed gradient back through the
    encoder once: the encoder's gradient equals the per-step recomputation's, and its forward
    calls drop from one per trained step to one per micro-batch and epoch."""
    overrides = (*PG, "policy.timestep_fraction=1.0", "train.grad_accum=2",
                 "train.max_grad_norm=1e9")
    shared, shared_forwards = encoder_gradient_of_one_step(make_trainer(*overrides))
    trainer = make_trainer(*overrides)
    step_loss = trainer.policy.step_loss  # each step recomputes c_θ itself, as before
    trainer.policy.step_loss = lambda rollout, i, context=None: step_loss(rollout, i)
    per_step, per_step_forwards = encoder_gradient_of_one_step(trainer)
    assert len(shared) == len(per_step) > 0
    # float sums in another order: equal to 1e-4 of the largest gradient (some are ~0)
    scale = max(b.abs().max().item() for b in per_step)
    for a, b in zip(shared, per_step):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale)
    # one forward per micro-batch (2) against one per trained step (T per micro-batch; the
    # patched run computes the loop's shared c_θ too, unused)
    t = trainer.config.sample.num_steps
    assert (shared_forwards, per_step_forwards - shared_forwards) == (2, 2 * t)


SHAPES_PG = ("model.source=shapes", "sample.num_steps=4", "sample.resolution=64",
             "sample.guidance_scale=5", "train.batch_size=2", "train.eval_at_start=false",
             "train.sample_grid=false", "train.lr=1e-3", "data.heldout_count=2",
             "data.eval_seeds=[0]", "eval.diversity=false", "eval.distribution=false",
             "reward.weights={oracle: 1}", "reward.clip_constraint=0", *PG)


def test_oracle_reward_trains_by_policy_gradient_on_shapes(tmp_path):
    """The oracle's 0/1 accuracy has no gradient, yet a policy-gradient step on it moves the
    encoder (given a prompt whose samples disagree), and the evaluation scores it by name."""
    from textcraftor.trainer import TextCraftor

    config = load_run_config(None, [*SHAPES_PG, f"output_dir={tmp_path / 'run'}",
                                    "policy.samples_per_prompt=4"])
    trainer = TextCraftor(config, device="cpu", show_progress=False)
    before = [p.detach().clone() for p in trainer.pipeline.text_encoder.parameters()]
    metrics = trainer.train_step(1)
    # these seeds give some prompt both outcomes (1 of 8 images right): non-zero advantages
    assert 0 < metrics["train/oracle"] < 1 and math.isfinite(metrics["loss"])
    change = sum((a - b).abs().sum().item()
                 for a, b in zip(trainer.pipeline.text_encoder.parameters(), before))
    assert change > 0 and metrics["grad_norm"] > 0
    result = trainer.evaluate()
    assert 0 <= result.metrics["eval/oracle"] <= 1
    assert result.metrics["eval/oracle"] == pytest.approx(result.metrics["eval/oracle_all"])


def test_oracle_reward_scores_renders_of_the_world():
    from textcraftor.rewards import load_reward
    from textcraftor.shapes import ShapesDataset

    images, captions, _ = ShapesDataset(seed=5).batch(0, 4)
    reward = load_reward("oracle")
    right = reward(images.float() / 255, captions)
    assert right.dtype == torch.float32 and set(right.tolist()) <= {0.0, 1.0}
    assert right.mean().item() >= 0.75  # the oracle reads the world's own renders
    assert reward(torch.zeros(4, 3, 64, 64), captions).tolist() == [0.0] * 4


def test_bad_policy_gradient_configurations_name_the_field():
    with pytest.raises(ConfigError, match="sample.eta"):
        load_run_config(None, ["sample.truncation=policy_gradient"])
    shapes = ("model.source=shapes", "reward.weights={oracle: 1}")
    for truncation in ("last_k", "random_k", "x0_shortcut", "direct"):
        with pytest.raises(ConfigError, match="reward.weights.oracle.*sample.truncation"):
            load_run_config(None, [*shapes, f"sample.truncation={truncation}"])
    with pytest.raises(ConfigError, match="reward.weights.oracle.*shapes"):
        load_run_config(None, [*PG, "reward.weights={oracle: 1}"])
    with pytest.raises(ConfigError, match="policy.ppo_epochs.*policy_gradient"):
        load_run_config(None, ["policy.ppo_epochs=2"])
    with pytest.raises(ConfigError, match="policy.clip_range"):
        load_run_config(None, [*PG, "policy.clip_range=0"])
    with pytest.raises(ConfigError, match="policy.timestep_fraction"):
        load_run_config(None, [*PG, "policy.timestep_fraction=1.5"])
    with pytest.raises(ConfigError, match="reward.sources"):
        load_run_config(None, [*shapes, *PG, "reward.sources={oracle: {source: x}}"])
    config = load_run_config(None, [*shapes, *PG])  # accepted: shapes, policy_gradient
    assert config.reward.active() == {"oracle": 1.0, "clip": 1.0}
