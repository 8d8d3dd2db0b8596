"""``python -m textcraftor.bench --json``: cost of a training step against its physical limit.

For each K and checkpointing setting, the ideal step is what the computation cannot avoid:
    ideal = sample + (c + r)·K·unet_call + c·(decode + reward)
sample is the whole no-grad forward (encode, T guided UNet calls, decode, rewards); c = 1 while
the UNet is frozen (only input gradients flow back), 2 when it trains; r = 1 with checkpointing
(one recomputed forward per grad step). overhead_ratio = train_step / ideal.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from textcraftor.config import RunConfig, load_run_config
from textcraftor.models import load_pipeline
from textcraftor.objective import build_objective
from textcraftor.sampler import (
    SampleNoise,
    Truncation,
    decode,
    denoise,
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], object]], device: torch.device,
                        repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each function, timed round-robin so that drifts in machine speed
    (other processes, thermal) hit every measurement alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def saved_activation_bytes(trainer: TextCraftor, prompts, seeds, truncation) -> int:
    """Bytes of distinct tensors autograd saves for backward in one training forward
    (parameters and buffers excluded: they exist anyway)."""
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
        loss, _ = trainer.forward_loss(prompts, seeds, truncation)
    loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return sum(storages.values())


def bench_row(trainer: TextCraftor, k: int, repeats: int, warmup: int) -> dict:
    cfg = trainer.config
    s, device = cfg.sample, trainer.device
    prompts = [p.text for p in trainer.prompt_sampler.batch(0)]
    seeds = list(range(len(prompts)))
    pipe, objective = trainer.pipeline, trainer.objective
    ids = trainer.tokens(prompts)
    noise = SampleNoise(seeds, device)
    latents = noise.draw(trainer.latent_shape)

    @torch.no_grad()
    def sample():
        with trainer._autocast():
            context = guidance_context(pipe.text_encoder, ids, trainer.empty_ids, s.guidance_scale)
            x0 = denoise(pipe.unet, pipe.scheduler, latents, context, context, 0, None,
                         s.guidance_scale, s.eta, noise=noise)
            return objective(decode(pipe.vae, x0), prompts)

    with torch.no_grad(), trainer._autocast():
        context = guidance_context(pipe.text_encoder, ids, trainer.empty_ids, s.guidance_scale)
        images = decode(pipe.vae, latents)
    t_mid = pipe.scheduler.timesteps[len(pipe.scheduler.timesteps) // 2]

    def no_grad(fn):
        def run():
            with torch.no_grad(), trainer._autocast():
                return fn()
        return run

    step = iter(range(1, 10**9))
    seconds = interleaved_medians({
        "sample_s": sample,
        "unet_call_s": no_grad(lambda: guided_noise(pipe.unet, latents, t_mid, context,
                                                    s.guidance_scale)),
        "decode_s": no_grad(lambda: decode(pipe.vae, latents)),
        "reward_s": no_grad(lambda: objective(images, prompts)),
        "train_step_s": lambda: trainer.train_step(next(step)),
    }, device, repeats, warmup)
    sample_s, unet_call_s, decode_s, reward_s, train_step_s = seconds.values()
    c = 2 if cfg.model.train_unet != "none" else 1
    r = 1 if s.checkpointing else 0
    ideal = sample_s + (c + r) * k * unet_call_s + c * (decode_s + reward_s)
    saved = saved_activation_bytes(trainer, prompts, seeds, Truncation(s.num_steps - k))
    return {
        "K": k, "checkpointing": s.checkpointing, "sample_s": sample_s,
        "unet_call_s": unet_call_s, "decode_s": decode_s, "reward_s": reward_s,
        "train_step_s": train_step_s, "ideal_step_s": ideal,
        "overhead_ratio": train_step_s / ideal, "saved_activation_bytes": saved,
    }


def run_bench(config: RunConfig, ks: list[int], repeats: int, warmup: int) -> dict:
    m = config.model
    pipeline = load_pipeline(m.source, m.cache_dir, m.revision)
    objective = build_objective(config.reward, m.source, m.cache_dir)
    rows = []
    t = config.sample.num_steps
    for k in sorted({min(k, t) for k in ks}):
        for checkpointing in (True, False):
            sample = replace(config.sample, truncation="last_k", k=k, checkpointing=checkpointing)
            trainer = TextCraftor(replace(config, sample=sample), pipeline=pipeline,
                                  objective=objective, show_progress=False)
            rows.append(bench_row(trainer, k, repeats, warmup))
            log.info("K=%d ckpt=%s ratio %.3f", k, checkpointing, rows[-1]["overhead_ratio"])
    return {
        "preset": m.source, "T": t, "batch": config.train.batch_size,
        "px": config.sample.resolution, "device": str(trainer.device),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "rewards": sorted(config.reward.active()), "train_unet": m.train_unet,
        "repeats": repeats, "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textcraftor.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--preset", default=None, help="model source (default tiny)")
    parser.add_argument("--config", help="YAML run config to start from")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--ks", default="1,2,5,T", help="K values; T = num_steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    overrides = BENCH_DEFAULTS + ([f"model.source={args.preset}"] if args.preset else [])
    config = load_run_config(args.config, overrides + args.overrides)
    config = config.with_output_dir(config.output_dir + "-bench")
    t = config.sample.num_steps
    ks = [t if k.strip() == "T" else int(k) for k in args.ks.split(",")]
    result = run_bench(config, ks, args.repeats, args.warmup)
    if args.json:
        print(json.dumps(result))
    else:
        for row in result["rows"]:
            print(f"K={row['K']:>3} ckpt={row['checkpointing']!s:5} "
                  f"step {row['train_step_s']:.3f}s ideal {row['ideal_step_s']:.3f}s "
                  f"ratio {row['overhead_ratio']:.3f} "
                  f"saved {row['saved_activation_bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
