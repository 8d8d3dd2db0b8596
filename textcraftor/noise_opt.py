"""Noise optimisation, the "no fine-tuning" baseline: ReNO (Eyring et al., NeurIPS 2024, "ReNO:
Enhancing One-step Text-to-Image Models through Reward-based Noise Optimization").

For each prompt and its noise seed, x_T starts as that seed's draw (``SampleNoise``) and is
optimised for N iterations under

    L(x_T) = −Σ wᵢ·sᵢ·Rᵢ(D(chain(x_T)), p) + λ_reg · NLL_χ(‖x_T‖; d)

where chain is the run's whole DDIM chain of T steps (gradient through every step, UNet calls
checkpointed), D the VAE decoder, Rᵢ the run's ``Objective`` and NLL_χ the negative
log-likelihood of ‖x_T‖ under the chi distribution with d = dim(x_T) degrees of freedom: the
norm of a standard normal draw, so the regulariser keeps x_T on the shell where N(0, I) puts
its mass. Nothing else changes: the text encoder, UNet, VAE and rewards are frozen, and the
gradient is taken with respect to x_T alone (``torch.autograd.grad``), so no weight ever
holds a ``.grad``.

ReNO's published settings, followed as defaults (code: github.com/ExplainableML/ReNO,
``arguments.py``, ``training/optim.py``, ``training/trainer.py``): 50 iterations; SGD with
momentum 0.9 and Nesterov, learning rate 5; gradient-norm clipping at 0.1 before each step;
regulariser weight 0.01 on 0.5·‖x‖² − (d−1)·log‖x‖ (the chi NLL without its constant, which
has no gradient; here the constant is kept so the value *is* the NLL). ReNO optimises one
image per prompt with a one-step model; here T steps and a batch: each sample's loss,
regulariser and gradient clipping are its own (losses summed over the batch, norms per
sample), so a sample's result never depends on its batch-mates.

``python -m textcraftor.noise_opt --config run.yaml --out RUN`` evaluates it like a trial (the
run's held-out prompts × evaluation seeds, the trainer's ``Evaluator``) and writes a run folder;
``study.noise_opt`` logs that folder to a sweep's MLflow parent as a trial.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from textcraftor.config import ConfigError, RunConfig, SampleConfig, load_run_config

if TYPE_CHECKING:  # torch and the models load only once the command line is checked
    import torch

    from textcraftor.models import Pipeline
    from textcraftor.objective import Objective

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
# which x_T a sample ends with: the last iterate, or ReNO's choice — the iterate whose image had
# the lowest reward loss (−Σ wᵢ·sᵢ·Rᵢ, the regulariser left out), over iterations 0..N
SELECTIONS = ("final", "best")
NOISE_OPT_FILE = "noise_opt.json"  # the options and cost of a noise-optimisation run folder
LATENTS_FILE = "noise_opt_latents.pt"  # the optimised x_T of every evaluation image


@dataclass(frozen=True)
class NoiseOptOptions:
    """ReNO's settings (defaults: the paper's code, see the module docstring)."""

    iterations: int = 50  # N optimizer steps on x_T (then one more pass, no gradient, for the
    #                       final images)
    lr: float = 5.0  # learning rate (ReNO: 5 with SGD)
    reg_weight: float = 0.01  # λ_reg on the chi NLL of ‖x_T‖ (ReNO: 0.01)
    grad_clip: float = 0.1  # max L2 norm of each sample's gradient; 0 = no clipping (ReNO: 0.1)
    optimizer: str = "sgd"  # sgd (momentum 0.9, Nesterov: ReNO's) | adam (eps 1e-2, ReNO's)
    momentum: float = 0.9  # SGD momentum
    checkpointing: bool = True  # recompute each UNet call in the backward (memory for time)
    batch_size: int | None = None  # images optimised together; None: train.batch_size
    select: str = "final"  # final: the last x_T | best: ReNO's lowest-reward-loss iterate
    #   (selected by the objective the evaluation also scores: it flatters the method)

    def check(self) -> None:
        """Raise ConfigError naming the command-line option of the first bad value."""
        problems = [
            (self.iterations >= 1, "--iterations", f"must be >= 1, got {self.iterations}"),
            (math.isfinite(self.lr) and self.lr > 0, "--lr",
             f"must be a finite number > 0, got {self.lr}"),
            (math.isfinite(self.reg_weight) and self.reg_weight >= 0, "--reg-weight",
             f"must be a finite number >= 0, got {self.reg_weight}"),
            (math.isfinite(self.grad_clip) and self.grad_clip >= 0, "--grad-clip",
             f"must be a finite number >= 0 (0 = no clipping), got {self.grad_clip}"),
            (self.optimizer in OPTIMIZERS, "--optimizer",
             f"{self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"),
            (math.isfinite(self.momentum) and 0 <= self.momentum < 1, "--momentum",
             f"must be in [0, 1), got {self.momentum}"),
            (self.batch_size is None or self.batch_size >= 1, "--batch-size",
             f"must be >= 1, got {self.batch_size}"),
            (self.select in SELECTIONS, "--select",
             f"{self.select!r} is not one of {', '.join(SELECTIONS)}"),
        ]
        for ok, option, message in problems:
            if not ok:
                raise ConfigError(f"{option}: {message}")


@dataclass
class NoiseOptResult:
    images: torch.Tensor  # [B,3,H,W] in [0,1] from each sample's selected x_T (no gradient)
    latents: torch.Tensor  # each sample's selected x_T (options.select), [B,C,h,w], detached
    history: list[dict[str, float]]  # per iteration 0..N: mean over the batch of loss (reward
    #   loss + λ·NLL), reward_loss, regulariser (the NLL), norm (‖x_T‖) and each reward Rᵢ;
    #   entry i is x_T after i steps (entry N: the final x_T, scored without gradient)
    unet_calls: int = 0  # UNet forward invocations, counted by a hook (checkpoint recomputes
    #                      included); each one runs the guided doubled batch [2B]
    unet_latents: int = 0  # Σ over those invocations of their batch size (2B with guidance)
    per_image: dict[str, list[float]] = field(default_factory=dict)  # iteration-0 and final
    #   loss of each image, its iteration-0 reward loss, its selected iteration and that
    #   iterate's reward loss: {"loss_start": [B], "loss_end": [B], "reward_loss_start": [B],
    #   "selected_iteration": [B], "selected_reward_loss": [B]}


def chi_nll(latents: torch.Tensor) -> torch.Tensor:
    """−log χ_d(‖x‖) per sample, [B], in fp32: d = dim(x) (one sample's element count) and
    χ_d(r) = r^(d−1)·e^(−r²/2) / (2^(d/2−1)·Γ(d/2)), the density of the norm of a d-dimensional
    standard normal. ReNO's regulariser, 0.5·r² − (d−1)·log r, plus the constant."""
    import torch

    d = latents[0].numel()
    r = torch.linalg.vector_norm(latents.flatten(1).float(), dim=1)
    return 0.5 * r**2 - (d - 1) * torch.log(r) + (d / 2 - 1) * math.log(2) + math.lgamma(d / 2)


def expected_unet_calls(iterations: int, num_steps: int, checkpointing: bool) -> int:
    """The UNet invocations of one batch: N iterations × T steps × (1 forward + 1 recompute in
    the backward when checkpointing), then T for the final images (no gradient)."""
    return iterations * num_steps * (2 if checkpointing else 1) + num_steps


class _CallCounter:
    """Counts a module's forward invocations and the batch sizes they ran (a pre-hook: a
    checkpointed call's recompute in the backward counts too)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = self.latents = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1
        self.latents += int(args[0].shape[0]) if args else 0

    def close(self) -> None:
        self.handle.remove()


def _chain(pipeline: Pipeline, latents: torch.Tensor, context: torch.Tensor,
           sample: SampleConfig, seeds: Sequence[int], checkpointing: bool) -> torch.Tensor:
    """The whole DDIM chain from x_T (every step with gradient when x_T carries it): x_0
    latents. With eta > 0, DDIM's noise comes from each sample's own stream, after its x_T draw,
    the same in every iteration (as ``denoise`` draws it)."""
    from torch.utils.checkpoint import checkpoint

    from textcraftor.sampler import SampleNoise, ddim_step, guided_noise

    noise = SampleNoise(seeds, latents.device)
    noise.draw(latents.shape[1:])  # x_T's draw: DDIM's noise continues after it
    scheduler = pipeline.scheduler
    for t in scheduler.timesteps:
        if checkpointing and latents.requires_grad:
            # non-reentrant: gradients are taken with torch.autograd.grad, which the
            # reentrant form refuses
            eps = checkpoint(guided_noise, pipeline.unet, latents, t, context,
                             sample.guidance_scale, use_reentrant=False)
        else:
            eps = guided_noise(pipeline.unet, latents, t, context, sample.guidance_scale)
        latents = ddim_step(scheduler, eps, t, latents, sample.eta, noise).prev_sample
    return latents


def _clip_per_sample(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Each sample's gradient scaled to L2 norm ≤ max_norm (``clip_grad_norm_``'s rule, one
    sample at a time)."""
    if max_norm <= 0:
        return grad
    norms = torch_norms(grad)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return grad * scale.view(-1, *([1] * (grad.ndim - 1)))


def torch_norms(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.linalg.vector_norm(x.flatten(1).float(), dim=1).to(x.dtype)


def _make_optimizer(x: torch.Tensor, options: NoiseOptOptions):
    import torch

    if options.optimizer == "adam":
        return torch.optim.Adam([x], lr=options.lr, eps=1e-2)  # ReNO's eps
    return torch.optim.SGD([x], lr=options.lr, momentum=options.momentum,
                           nesterov=options.momentum > 0)


def optimise_noise(
    pipeline: Pipeline,
    objective: Objective,
    prompt_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sample: SampleConfig,
    options: NoiseOptOptions,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> NoiseOptResult:
    """Optimise each sample's x_T (from its noise seed) for ``options.iterations`` steps.

    prompt_ids: [B, L] token ids; ``pipeline.scheduler.timesteps`` must be set to T steps.
    Gradient flows from the rewards through the VAE decoder and all T UNet calls into x_T only;
    the modules are left as they are (their ``requires_grad`` untouched, no ``.grad`` made).
    """
    import torch

    from textcraftor.sampler import decode, guidance_context, initial_noise, latent_shape

    options.check()
    device = prompt_ids.device
    shape = latent_shape(pipeline.vae, pipeline.unet, sample.resolution)
    with torch.no_grad(), autocast():  # the frozen encoder's context, once
        context = guidance_context(pipeline.text_encoder, prompt_ids, empty_ids,
                                   sample.guidance_scale)
    x = initial_noise(seeds, shape, device).requires_grad_(True)  # x_T, fp32
    optimizer = _make_optimizer(x, options)
    counter = _CallCounter(pipeline.unet)
    history: list[dict[str, float]] = []
    per_image: dict[str, list[float]] = {}
    best = None  # (reward loss [B], iteration [B], x_T, images) of each sample's best iterate
    try:
        for i in range(options.iterations + 1):
            last = i == options.iterations
            with torch.set_grad_enabled(not last), autocast():
                x0 = _chain(pipeline, x if not last else x.detach(), context, sample, seeds,
                            options.checkpointing)
                images = decode(pipeline.vae, x0)
                loss, scores = objective(images, prompts)  # mean over the batch
            regulariser = chi_nll(x if not last else x.detach())  # [B], fp32
            # Σ over samples: each sample's gradient is its own loss's, whatever the batch
            total = loss.float() * len(prompts) + options.reg_weight * regulariser.sum()
            per_sample = (-objective_per_image(objective, scores)
                          + options.reg_weight * regulariser).detach()
            reward_loss = -objective_per_image(objective, scores).detach().float()
            if i == 0:
                per_image["loss_start"] = per_sample.tolist()
                per_image["reward_loss_start"] = reward_loss.tolist()
            best = _keep_best(best, reward_loss, i, x.detach(), images.detach().float())
            history.append({"loss": total.item() / len(prompts),
                            "reward_loss": loss.item(), "regulariser": regulariser.mean().item(),
                            "norm": torch_norms(x.detach()).float().mean().item(),
                            **{name: v.detach().float().mean().item()
                               for name, v in scores.items()}})
            if last:
                per_image["loss_end"] = per_sample.tolist()
                break
            (grad,) = torch.autograd.grad(total, [x])
            optimizer.zero_grad(set_to_none=True)
            x.grad = _clip_per_sample(grad, options.grad_clip)
            optimizer.step()
            x.grad = None
    finally:
        counter.close()
    if options.select == "best":
        reward_loss, iteration, latents, images = best
    else:  # the last pass's x_T, images and reward loss
        latents, images = x.detach(), images.detach().float()
        iteration = torch.full((len(prompts),), options.iterations, device=latents.device)
    per_image["selected_iteration"] = [int(v) for v in iteration.tolist()]
    per_image["selected_reward_loss"] = reward_loss.tolist()
    return NoiseOptResult(images, latents.clone(), history, counter.calls, counter.latents,
                          per_image)


def _keep_best(best, reward_loss: torch.Tensor, iteration: int, latents: torch.Tensor,
               images: torch.Tensor):
    """Each sample's iterate with the lowest reward loss so far (the earlier one on a tie, as
    ReNO's strict ``<``): (reward loss [B], iteration [B], x_T [B,C,h,w], images [B,3,H,W])."""
    import torch

    if best is None:
        return (reward_loss, torch.full_like(reward_loss, iteration, dtype=torch.long),
                latents.clone(), images)
    loss, at, kept_latents, kept_images = best
    better = reward_loss < loss

    def pick(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(better.view(-1, *[1] * (new.dim() - 1)), new, old)

    return (pick(reward_loss, loss), pick(torch.full_like(at, iteration), at),
            pick(latents, kept_latents), pick(images, kept_images))


def objective_per_image(objective: Objective, scores) -> torch.Tensor:
    """Σ wᵢ·sᵢ·Rᵢ per image over the rewards the objective trains on, [B]."""
    return sum(objective.coefficients[n] * scores[n].float() for n in objective.trained)


# --- the command line: evaluate like a trial ---------------------------------------------------


def add_options(parser: argparse.ArgumentParser) -> None:
    """The noise-optimisation options (``NoiseOptOptions``), ReNO's values as defaults."""
    defaults = NoiseOptOptions()
    parser.add_argument("--iterations", type=int, default=defaults.iterations,
                        help=f"optimizer steps on x_T (ReNO: {defaults.iterations})")
    parser.add_argument("--lr", type=float, default=defaults.lr,
                        help=f"learning rate (ReNO: {defaults.lr} with SGD)")
    parser.add_argument("--reg-weight", type=float, default=defaults.reg_weight,
                        help=f"weight of the chi-NLL norm regulariser (ReNO: "
                        f"{defaults.reg_weight})")
    parser.add_argument("--grad-clip", type=float, default=defaults.grad_clip,
                        help=f"max gradient norm per sample, 0 = none (ReNO: "
                        f"{defaults.grad_clip})")
    parser.add_argument("--optimizer", default=defaults.optimizer,
                        help="sgd (momentum, Nesterov; ReNO's) | adam")
    parser.add_argument("--momentum", type=float, default=defaults.momentum,
                        help=f"SGD momentum (ReNO: {defaults.momentum})")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                        help="keep every UNet call's activations (faster, more memory)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images optimised together (default: train.batch_size)")
    parser.add_argument("--select", default=defaults.select,
                        help="final: each image from its last x_T (default) | best: ReNO's, the "
                        "iterate with the lowest reward loss (chosen by the objective the "
                        "evaluation scores: it flatters the method)")


def options_from(args: argparse.Namespace) -> NoiseOptOptions:
    """The options of a command line (``add_options``), checked: ConfigError names the option."""
    options = NoiseOptOptions(args.iterations, args.lr, args.reg_weight, args.grad_clip,
                              args.optimizer, args.momentum, args.checkpointing, args.batch_size,
                              args.select)
    options.check()
    return options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m textcraftor.noise_opt",
        description="ReNO-style noise optimisation (no weights change) on every held-out prompt "
        "× evaluation seed of a run config, evaluated like a trial; writes a run folder.")
    parser.add_argument("--config", help="YAML run config (default: the tiny preset)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a run-config field")
    parser.add_argument("--out", required=True, help="the run folder to write (must not hold "
                        "a run yet)")
    add_options(parser)
    return parser.parse_args(argv)


def check_out(out: str | Path) -> None:
    """Refuse a folder that already holds a run (ConfigError naming ``--out``)."""
    if (Path(out) / "metrics.jsonl").exists():
        raise ConfigError(f"--out: {out} already holds a run (metrics.jsonl); choose another "
                          "folder")


def check_config(config: RunConfig) -> None:
    """What the trainer checks before any weights load: the model's limits, every source."""
    from textcraftor.limits import check_model_limits
    from textcraftor.sources_check import check_sources, model_problems

    if not model_problems(config):
        check_model_limits(config)
    check_sources(config)


def plan(args: argparse.Namespace) -> tuple[RunConfig, NoiseOptOptions]:
    """Check the command line before any model loads; raises ConfigError naming the option or
    field, or FileNotFoundError."""
    options = options_from(args)
    check_out(args.out)
    config = load_run_config(args.config, args.overrides).with_output_dir(args.out)
    check_config(config)
    return config, options


def run(config: RunConfig, options: NoiseOptOptions, device=None) -> dict[str, float]:
    """Evaluate noise optimisation like a trial: the untuned model at step 0 (when
    ``train.eval_at_start``), then every held-out prompt × evaluation seed optimised from that
    image's own noise seed (``eval_noise_seed``) and scored by the trainer's ``Evaluator`` at
    step N, KID/FID against the base model's images for the same prompts and seeds. Writes
    ``config.json``, ``metrics.jsonl`` (eval lines as a trainer's; ``iteration`` lines: the
    per-iteration means; a ``cost`` line), ``eval/``, ``samples/``, ``noise_opt.json`` and the
    optimised latents. Returns the final eval metrics and the cost."""
    import torch

    from textcraftor.atomic import write_json_atomic
    from textcraftor.configio import to_dict
    from textcraftor.eval_images import eval_noise_seed
    from textcraftor.run_folder import save_grid
    from textcraftor.trainer import TextCraftor

    started = time.perf_counter()
    runner = TextCraftor(config, device=device, show_progress=False)
    pipe = runner.pipeline
    for module in (pipe.text_encoder, pipe.original_text_encoder, pipe.unet, pipe.vae,
                   runner.objective):
        module.requires_grad_(False).eval()
    runner.folder.prepare(to_dict(config), -1)
    heldout, seeds = runner.split.heldout, config.data.eval_seeds
    prompts = [p.text for p in heldout]
    categories = [p.category for p in heldout]
    if config.train.eval_at_start:  # the untuned model: also the KID/FID reference
        base = runner.evaluate()
        runner.folder.write_evaluation(base, 0, config.train.sample_grid)
        runner.folder.write_metrics("eval", 0, base.metrics)
    pairs = [(p, s) for p in prompts for s in seeds]  # prompt-major, as the Evaluator reads
    batch = options.batch_size or config.train.batch_size
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
        torch.cuda.reset_peak_memory_stats(runner.device)
    optimised = time.perf_counter()
    results = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        chunk_prompts = [p for p, _ in chunk]
        results.append(optimise_noise(
            pipe, runner.objective, runner.tokens(chunk_prompts), runner.empty_ids,
            chunk_prompts, [eval_noise_seed(s, p) for p, s in chunk], config.sample, options,
            runner._autocast))
        log.info("noise optimisation: %d/%d images", start + len(chunk), len(pairs))
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    cost = {"cost/wall_s": time.perf_counter() - optimised,
            "cost/unet_calls": float(sum(r.unet_calls for r in results)),
            "cost/unet_latents": float(sum(r.unet_latents for r in results)),
            "cost/images": float(len(pairs)),
            # the trainer's unit (train/unet_passes): per latent, not CFG-doubled, every forward
            # call, checkpoint recompute and backward pass (the hook counts no backward)
            "cost/unet_passes": float(len(pairs) * config.sample.num_steps * (
                options.iterations * (2 + int(options.checkpointing)) + 1)),
            "cost/peak_memory_bytes": (float(torch.cuda.max_memory_allocated(runner.device))
                                       if runner.device.type == "cuda" else None)}
    images = torch.cat([r.images for r in results]).to(runner.device)
    scores = []
    with torch.no_grad():
        for start in range(0, len(pairs), config.train.eval_batch_size):
            chunk = slice(start, start + config.train.eval_batch_size)
            with runner._autocast():
                scores.append(runner.evaluator.rewards(images[chunk],
                                                       [p for p, _ in pairs[chunk]]))
        merged = {k: torch.cat([s[k] for s in scores]) for k in scores[0]}
        reference = runner.eval_images.reference(images, 1.0, False, prompts)
        result = runner.evaluator(images, merged, prompts, seeds, categories, reference)
    n = options.iterations
    for i in range(n + 1):  # the per-iteration means over every image (batches weighted)
        line = {}
        for key in results[0].history[i]:
            values = [(r.history[i][key], len(r.images)) for r in results]
            line[f"noise_opt/{key}"] = sum(v * w for v, w in values) / len(pairs)
        runner.folder.write_metrics("iteration", i, line)
    runner.folder.write_evaluation(result, n, True)
    save_grid(result, runner.run_dir / "samples" / f"step_{n:07d}.png")
    runner.folder.write_metrics("eval", n, result.metrics)
    cost["cost/total_wall_s"] = time.perf_counter() - started
    runner.folder.write_metrics("cost", n, cost)
    torch.save(torch.cat([r.latents for r in results]).cpu(), runner.run_dir / LATENTS_FILE)
    write_json_atomic(runner.run_dir / NOISE_OPT_FILE, {
        "method": "noise_opt", "options": asdict(options), "batch_size": batch,
        "expected_unet_calls_per_batch": expected_unet_calls(n, config.sample.num_steps,
                                                             options.checkpointing),
        "cost": cost,
        "loss_start": [v for r in results for v in r.per_image["loss_start"]],
        "loss_end": [v for r in results for v in r.per_image["loss_end"]],
        "selected_iteration": [v for r in results for v in r.per_image["selected_iteration"]],
        "selected_reward_loss": [v for r in results
                                 for v in r.per_image["selected_reward_loss"]]})
    return {**result.metrics, **cost}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        config, options = plan(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        final = run(config, options)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"output_dir": config.output_dir, **final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
