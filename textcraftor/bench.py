"""``python -m textcraftor.bench --json``: cost of a training step against its physical limit.

For each K, UNet checkpointing and VAE-decoder checkpointing setting, the ideal step is what the
computation cannot avoid:
    ideal = sample + (c + r)·K·unet_call + (c + v)·decode + c·reward
sample is the whole no-grad forward (encode, T guided UNet calls, decode, rewards); c = 1 while
the UNet is frozen (only input gradients flow back), 2 when it trains; r = 1 with UNet
checkpointing (one recomputed forward per grad step), v = 1 with VAE checkpointing (the decode
runs again in backward). The other estimators' ideals follow the UNet calls their own steps drew
(``bench_row``); policy gradient's is its rollout plus one guided call and its backward per
trained chain step (``policy_gradient_row``). overhead_ratio = train_step / ideal. On CUDA every
time is measured with CUDA events after warm-up, and each row reports ``peak_memory_bytes``: the
most memory allocated during one training step (``torch.cuda.max_memory_allocated``, reset per
row; the weights, optimizer state and activations together).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from textcraftor.config import (
    NO_GRADIENT_REWARDS,
    QUALITY_REWARDS,
    RunConfig,
    for_estimator,
    load_run_config,
)
from textcraftor.configio import ConfigError, from_dict, to_dict
from textcraftor.models import Pipeline, load_pipeline
from textcraftor.objective import Objective, build_objective
from textcraftor.sampler import (
    SampleNoise,
    decode,
    denoise,
    draw_truncation,
    guidance_context,
    guided_noise,
)
from textcraftor.trainer import TextCraftor

log = logging.getLogger(__name__)
# sample.k=1: every row sets its own K; a default K above a smaller --set sample.num_steps
# would otherwise fail validation.
BENCH_DEFAULTS = ["model.source=tiny", "sample.resolution=128", "sample.num_steps=20",
                  "sample.k=1", "train.batch_size=2", "train.eval_at_start=false",
                  "train.sample_grid=false"]


# --dtype → (model.mixed_precision, reward.dtype): the frozen reward towers are stored in the
# autocast dtype (their matmuls run in it anyway); --set reward.dtype=fp32 keeps them in fp32
DTYPES = {"fp32": ("'no'", "fp32"), "bf16": ("bf16", "bf16"), "fp16": ("fp16", "fp16")}
SWITCH = {"on": (True,), "off": (False,), "both": (True, False)}


class BenchInputError(ValueError):
    """A bench option the machine or the config cannot honour; raised before any model loads."""


def check_device(name: str) -> torch.device:
    """The device ``--device`` names. Raises BenchInputError for CUDA on a machine without it
    (or an index it does not have), before anything is built."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise BenchInputError(f"--device {name!r}: not a torch device ({error})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchInputError(f"--device {name}: CUDA is not available on this machine "
                                  f"(torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BenchInputError(f"--device {name}: this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise BenchInputError(f"--device {name}: cpu or cuda[:N] only")
    return device


def check_dtype(dtype: str, device: torch.device) -> None:
    """fp16 autocast needs CUDA: on a CPU it is slow and unrepresentative of any GPU."""
    if dtype == "fp16" and device.type != "cuda":
        raise BenchInputError(f"--dtype fp16 on {device}: fp16 is benchmarked on CUDA only; "
                              f"use --dtype bf16 or fp32 here")


def parse_ks(text: str, t: int) -> list[int]:
    """``--k`` values, ``T`` = the number of DDIM steps. Raises BenchInputError naming a value
    that is not an integer in [1, T]."""
    ks = []
    for item in text.split(","):
        item = item.strip()
        try:
            k = t if item == "T" else int(item)
        except ValueError:
            raise BenchInputError(f"--k {item!r}: an integer or T, comma-separated") from None
        if not 1 <= k <= t:
            raise BenchInputError(f"--k {k}: K must be in [1, T] and T = sample.num_steps = {t}")
        ks.append(k)
    return sorted(set(ks))


# the estimators a bench row can time: the chain-backprop ones, and policy gradient's PPO step
# (direct needs image–caption pairs, not a chain)
BENCHED_ESTIMATORS = ("last_k", "random_k", "x0_shortcut", "window", "draft_lv", "drtune",
                      "policy_gradient")
# DDPO's DDIM η for the policy-gradient row when the config samples deterministically (η = 0
# has no log-probabilities)
POLICY_GRADIENT_ETA = 1.0


def parse_estimators(text: str) -> list[str]:
    """``--estimators`` names. Raises BenchInputError naming one the bench cannot time."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in BENCHED_ESTIMATORS:
            raise BenchInputError(f"--estimators {name!r}: not one of "
                                  f"{', '.join(BENCHED_ESTIMATORS)}")
    if not names:
        raise BenchInputError("--estimators: name at least one")
    return list(dict.fromkeys(names))


def reward_overrides(names: str) -> list[str]:
    """``--rewards aesthetic,pickscore,hpsv2,clip`` → config overrides: weight 1 for each named
    reward (a quality reward, or ShapesWorld's ``oracle``: policy gradient only), λ = 1 if
    ``clip`` is named else 0."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    allowed = (*QUALITY_REWARDS, *NO_GRADIENT_REWARDS, "clip")
    for name in chosen:
        if name not in allowed:
            raise BenchInputError(f"--rewards {name!r}: not one of {', '.join(allowed)}")
    if not chosen:
        raise BenchInputError(f"--rewards {names!r}: name at least one of {', '.join(allowed)}")
    weights = {n: 1.0 for n in chosen if n != "clip"}
    return [f"reward.weights={json.dumps(weights)}",
            f"reward.clip_constraint={1.0 if 'clip' in chosen else 0.0}"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes: CUDA events around it on CUDA (the kernels' time, not the
    launch's), the wall clock elsewhere."""
    if device.type == "cuda":
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        _sync(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def interleaved_medians(fns: dict[str, Callable[[], object]], device: torch.device,
                        repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each function, timed round-robin so that drifts in machine speed
    (other processes, thermal) hit every measurement alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            seconds = time_once(fn, device)
            if i >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_step_memory(trainer: TextCraftor, step: int) -> int | None:
    """Bytes allocated at the peak of one training step on CUDA (weights, optimizer state,
    activations), as the step itself measures it (``train/peak_memory_bytes``, from a reset at
    its start); None on the CPU."""
    if trainer.device.type != "cuda":
        return None
    _sync(trainer.device)
    return int(trainer.train_step(step)["train/peak_memory_bytes"])
def saved_activation_bytes(trainer: TextCraftor, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of distinct tensors autograd saves for backward in one training forward
    (``forward`` returns the loss; parameters and buffers excluded: they exist anyway)."""
    modules = [trainer.pipeline.text_encoder, trainer.pipeline.original_text_encoder,
               trainer.pipeline.unet, trainer.pipeline.vae, trainer.objective]
    resident = {t.untyped_storage().data_ptr() for m in modules
                for t in (*m.parameters(), *m.buffers())}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in resident:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward()
    loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return sum(storages.values())


def time_units_and_step(trainer: TextCraftor, prompts: Sequence[str], seeds: Sequence[int],
                        sample: Callable[[], object], repeats: int, warmup: int
                        ) -> tuple[dict[str, float], list[dict[str, float]], int]:
    """Median seconds, interleaved, of a row's units on ``prompts``' latents — ``sample`` (the
    no-grad forward its ideal starts from), one guided UNet call at the middle timestep, one
    decode, one scoring — and of its training step; returns (seconds {sample_s, unet_call_s,
    decode_s, reward_s, train_step_s}, the timed steps' metrics (their drawn counts), the next
    unused step number)."""
    s, pipe = trainer.config.sample, trainer.pipeline
    latents = SampleNoise(list(seeds), trainer.device).draw(trainer.latent_shape)
    with torch.no_grad(), trainer._autocast():
        context = guidance_context(pipe.text_encoder, trainer.tokens(list(prompts)),
                                   trainer.empty_ids, s.guidance_scale)
        images = decode(pipe.vae, latents)
    t_mid = pipe.scheduler.timesteps[len(pipe.scheduler.timesteps) // 2]

    def no_grad(fn):
        def run():
            with torch.no_grad(), trainer._autocast():
                return fn()
        return run

    steps: list[dict[str, float]] = []
    seconds = interleaved_medians({
        "sample_s": sample,
        "unet_call_s": no_grad(lambda: guided_noise(pipe.unet, latents, t_mid, context,
                                                    s.guidance_scale)),
        "decode_s": no_grad(lambda: decode(pipe.vae, latents)),
        "reward_s": no_grad(lambda: trainer.objective(images, list(prompts))),
        "train_step_s": lambda: steps.append(trainer.train_step(len(steps) + 1)),
    }, trainer.device, repeats, warmup)
    return seconds, steps[warmup:], len(steps) + 1


def bench_row(trainer: TextCraftor, repeats: int, warmup: int) -> dict:
    """Timings, activation bytes and (CUDA) peak memory of one configuration: its estimator
    (``sample.truncation``) with its K, checkpointing and VAE checkpointing. The ideal step
    counts what its draws cost (the mean over the timed steps' own counts):
        ideal = sample + (calls − T)·unet_call + (n_img − 1)·(decode + reward)
                + (c + r)·grad_calls·unet_call + (c + v)·n_img·decode + c·n_img·reward
    calls: guided UNet calls in the forward (the chain to its last step, plus DRaFT-LV's
    re-noisings), grad_calls: those with gradient, n_img: images scored (1 + DRaFT-LV's n)."""
    cfg = trainer.config
    s = cfg.sample
    prompts = [p.text for p in trainer.prompt_sampler.batch(0)]
    seeds = list(range(len(prompts)))
    pipe, objective = trainer.pipeline, trainer.objective
    ids = trainer.tokens(prompts)
    noise = SampleNoise(seeds, trainer.device)
    latents = noise.draw(trainer.latent_shape)

    @torch.no_grad()
    def sample():
        with trainer._autocast():
            context = guidance_context(pipe.text_encoder, ids, trainer.empty_ids, s.guidance_scale)
            x0 = denoise(pipe.unet, pipe.scheduler, latents, context, context, 0, None,
                         s.guidance_scale, s.eta, noise=noise)
            return objective(decode(pipe.vae, x0), prompts)

    seconds, timed, next_step = time_units_and_step(trainer, prompts, seeds, sample, repeats,
                                                    warmup)
    sample_s, unet_call_s, decode_s, reward_s, train_step_s = seconds.values()
    calls = statistics.mean(m["train/unet_calls"] for m in timed)
    grad_calls = statistics.mean(m["train/unet_grad_calls"] for m in timed)
    k = statistics.mean(m["train/k_drawn"] for m in timed)
    scored = 1 + (s.draft_lv_renoise if s.truncation == "draft_lv" else 0)
    c = 2 if cfg.model.train_unet != "none" else 1
    r = 1 if s.checkpointing else 0
    v = 1 if s.vae_checkpointing else 0
    ideal = (sample_s + (calls - s.num_steps) * unet_call_s + (scored - 1) * (decode_s + reward_s)
             + (c + r) * grad_calls * unet_call_s + (c + v) * scored * decode_s
             + c * scored * reward_s)
    truncation = draw_truncation(s, random.Random(0))
    saved = saved_activation_bytes(
        trainer, lambda: trainer.forward_loss(prompts, seeds, truncation)[0])
    return {
        "estimator": s.truncation, "K": k, "unet_calls": calls, "unet_grad_calls": grad_calls,
        "checkpointing": s.checkpointing, "vae_checkpointing": s.vae_checkpointing,
        "batch": len(prompts), "sample_s": sample_s, "unet_call_s": unet_call_s,
        "decode_s": decode_s, "reward_s": reward_s, "train_step_s": train_step_s,
        "ideal_step_s": ideal, "overhead_ratio": train_step_s / ideal,
        "saved_activation_bytes": saved, "peak_memory_bytes": peak_step_memory(trainer, next_step),
    }


def policy_gradient_row(trainer: TextCraftor, repeats: int, warmup: int) -> dict:
    """One PPO step (``sample.truncation=policy_gradient``) against its physical limit. Every
    term runs on a micro-batch's S·B latents (S = policy.samples_per_prompt, B prompts):
        ideal = grad_accum·rollout + grad_calls·(1 + c)·unet_call
    rollout: the trainer's own no-grad chain (T guided calls with DDIM log-probabilities), decode
    and rewards; grad_calls: the chain steps trained over every micro-batch and PPO epoch (the
    steps' own ``train/unet_grad_calls``), each one guided call with gradient and its backward
    (c as for the chain: 1 while the UNet is frozen, 2 when it trains; nothing is
    checkpointed, one call's activations are held at a time). Left out of the ideal: the
    encoder's forward and backward at each trained step, the advantages, the optimizer.
    saved_activation_bytes is one trained step's; the checkpointing switches do not apply."""
    cfg = trainer.config
    s, p = cfg.sample, cfg.policy
    prompts = [q.text for q in trainer.prompt_sampler.batch(0) for _ in range(p.samples_per_prompt)]
    seeds = list(range(len(prompts)))
    seconds, timed, next_step = time_units_and_step(
        trainer, prompts, seeds, lambda: trainer.policy.rollout(prompts, seeds), repeats, warmup)
    sample_s, unet_call_s, decode_s, reward_s, train_step_s = seconds.values()
    calls = statistics.mean(m["train/unet_calls"] for m in timed)
    grad_calls = statistics.mean(m["train/unet_grad_calls"] for m in timed)
    c = 2 if cfg.model.train_unet != "none" else 1
    ideal = cfg.train.grad_accum * sample_s + grad_calls * (1 + c) * unet_call_s
    rollout = trainer.policy.rollout(prompts, seeds)
    trainer.policy.normalise([rollout])
    trained = trainer.policy.steps(rollout, random.Random(0))[0]
    saved = saved_activation_bytes(trainer, lambda: trainer.policy.step_loss(rollout, trained)[0])
    return {
        "estimator": s.truncation, "K": statistics.mean(m["train/k_drawn"] for m in timed),
        "unet_calls": calls, "unet_grad_calls": grad_calls, "checkpointing": False,
        "vae_checkpointing": False, "batch": cfg.train.batch_size,
        "samples_per_prompt": p.samples_per_prompt, "ppo_epochs": p.ppo_epochs, "eta": s.eta,
        "sample_s": sample_s, "unet_call_s": unet_call_s, "decode_s": decode_s,
        "reward_s": reward_s, "train_step_s": train_step_s, "ideal_step_s": ideal,
        "overhead_ratio": train_step_s / ideal, "saved_activation_bytes": saved,
        "peak_memory_bytes": peak_step_memory(trainer, next_step),
    }


def build_models(config: RunConfig, device: torch.device) -> tuple[Pipeline, Objective, dict]:
    """The pipeline and the objective on ``device``, with the seconds each took to build."""
    m = config.model
    started = time.perf_counter()
    pipeline = load_pipeline(m.source, m.cache_dir, m.revision, device)
    _sync(device)
    built = time.perf_counter()
    objective = build_objective(config.reward, m.source, m.cache_dir, device)
    _sync(device)
    return pipeline, objective, {"pipeline_build_s": built - started,
                                 "rewards_build_s": time.perf_counter() - built}


def row_configs(config: RunConfig, ks: Sequence[int], estimators: Sequence[str]
                ) -> list[RunConfig]:
    """The run config of each row before the checkpointing switches: last_k at each K, then
    every other estimator named, with its own fields (``sample``'s, the ``policy`` section) from
    ``config`` when its ``sample.truncation`` is that estimator, else at their defaults; policy
    gradient at DDIM η = POLICY_GRADIENT_ETA when ``config`` has η = 0. Each is validated whole
    (e.g. the oracle reward with a chain estimator): ConfigError before any model is built."""
    t = config.sample.num_steps
    configs = []
    for estimator in estimators:
        data = for_estimator(to_dict(config), estimator)
        if estimator == "last_k":
            configs += [from_dict(RunConfig, {**data, "sample": {**data["sample"], "k": k}})
                        for k in sorted({min(k, t) for k in ks})]
            continue
        if estimator == "policy_gradient" and not data["sample"].get("eta"):
            data["sample"]["eta"] = POLICY_GRADIENT_ETA
        configs.append(from_dict(RunConfig, data))
    return configs


def run_bench(config: RunConfig, ks: Sequence[int], repeats: int, warmup: int,
              device: torch.device | str = "cpu", checkpointing: Sequence[bool] = (True, False),
              vae_checkpointing: Sequence[bool] = (False,),
              models: tuple[Pipeline, Objective, dict] | None = None,
              estimators: Sequence[str] = ("last_k",)) -> dict:
    """One row per estimator (last_k: per K) × checkpointing × VAE checkpointing (``models``: a
    built pipeline and objective to reuse, from ``build_models``)."""
    device = torch.device(device)
    pipeline, objective, build_s = models or build_models(config, device)
    rows = []
    t = config.sample.num_steps
    for base in row_configs(config, ks, estimators):
        policy_gradient = base.sample.truncation == "policy_gradient"
        # policy gradient back-propagates one UNet call at a time: no switch applies
        switches = ([(False, False)] if policy_gradient else
                    [(unet, vae) for unet in checkpointing for vae in vae_checkpointing])
        for unet_ckpt, vae_ckpt in switches:
            sample = replace(base.sample, checkpointing=unet_ckpt, vae_checkpointing=vae_ckpt)
            trainer = TextCraftor(replace(base, sample=sample), pipeline=pipeline,
                                  objective=objective, device=device, show_progress=False)
            row = (policy_gradient_row if policy_gradient else bench_row)(trainer, repeats, warmup)
            rows.append(row)
            del trainer
            log.info("batch %d %s K=%.2f ckpt=%s vae_ckpt=%s: step %.3fs ratio %.3f",
                     config.train.batch_size, sample.truncation, row["K"], unet_ckpt,
                     vae_ckpt, row["train_step_s"], row["overhead_ratio"])
    m = config.model
    return {
        "preset": m.source, "reward_preset": config.reward.preset,
        "rewards": sorted(config.reward.active()), "reward_dtype": config.reward.dtype,
        "mixed_precision": m.mixed_precision, "T": t, "batch": config.train.batch_size,
        "px": config.sample.resolution, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "train_unet": m.train_unet, "repeats": repeats, "warmup": warmup, **build_s,
        "rows": rows,
    }


def bench_config(args: argparse.Namespace) -> RunConfig:
    """The run config the options describe (BENCH_DEFAULTS, then the options, then --set)."""
    overrides = list(BENCH_DEFAULTS)
    if args.preset:
        overrides.append(f"model.source={args.preset}")
    if args.px:
        overrides.append(f"sample.resolution={args.px}")
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    if args.num_steps:
        overrides.append(f"sample.num_steps={args.num_steps}")
    if args.rewards:
        overrides += reward_overrides(args.rewards)
    if args.reward_preset:
        overrides.append(f"reward.preset={args.reward_preset}")
    mixed_precision, reward_dtype = DTYPES[args.dtype]
    overrides += [f"model.mixed_precision={mixed_precision}", f"reward.dtype={reward_dtype}"]
    config = load_run_config(args.config, overrides + args.overrides)
    return config.with_output_dir(config.output_dir + "-bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m textcraftor.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--preset", default=None, help="model source (default tiny)")
    parser.add_argument("--reward-preset", default=None,
                        help="reward.preset (sd15-arch: the paper's towers, random weights)")
    parser.add_argument("--rewards", default=None,
                        help="comma-separated rewards, each weight 1 (clip = the constraint)")
    parser.add_argument("--config", help="YAML run config to start from")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="autocast dtype, and the reward towers' storage dtype")
    parser.add_argument("--px", type=int, help="image side in pixels (sample.resolution)")
    parser.add_argument("--batch", type=int, help="prompts per step (train.batch_size)")
    parser.add_argument("--num-steps", type=int, help="T, DDIM steps (sample.num_steps)")
    parser.add_argument("--k", default="1,2,5,T", help="K values, comma-separated; T = num_steps")
    parser.add_argument("--estimators", default="last_k",
                        help="comma-separated gradient estimators, a row each (last_k: one per "
                             f"--k): {', '.join(BENCHED_ESTIMATORS)}; each other estimator's own "
                             "fields from --set when sample.truncation is it, else defaults "
                             f"(policy_gradient: sample.eta={POLICY_GRADIENT_ETA:g} if it is 0)")
    parser.add_argument("--checkpointing", choices=sorted(SWITCH), default="both",
                        help="UNet gradient checkpointing rows")
    parser.add_argument("--vae-checkpointing", choices=sorted(SWITCH), default="off",
                        help="VAE-decoder gradient checkpointing rows")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--warmup", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:  # every check before a model is built
        device = check_device(args.device)
        check_dtype(args.dtype, device)
        config = bench_config(args)
        estimators = parse_estimators(args.estimators)
        # --k applies to last_k's rows only
        ks = parse_ks(args.k, config.sample.num_steps) if "last_k" in estimators else []
        row_configs(config, ks, estimators)  # each row's config validates before a model
    except (BenchInputError, ConfigError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    result = run_bench(config, ks, args.repeats, args.warmup, device, SWITCH[args.checkpointing],
                       SWITCH[args.vae_checkpointing], estimators=estimators)
    if args.json:
        print(json.dumps(result))
    else:
        for row in result["rows"]:
            peak = row["peak_memory_bytes"]
            print(f"{row['estimator']:>11} K={row['K']:>5.2f} calls={row['unet_calls']:>5.1f} "
                  f"grad_calls={row['unet_grad_calls']:>5.1f} ckpt={row['checkpointing']!s:5} "
                  f"vae_ckpt={row['vae_checkpointing']!s:5} "
                  f"step {row['train_step_s']:.3f}s ideal {row['ideal_step_s']:.3f}s "
                  f"ratio {row['overhead_ratio']:.3f} "
                  f"saved {row['saved_activation_bytes'] / 2**20:.1f} MiB"
                  + (f" peak {peak / 2**30:.2f} GiB" if peak is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
