"""What every pretraining stage trains with: the stream of image–caption batches, the run's
wall clock, AdamW with its learning-rate schedule, and the step loop that records losses."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from textcraftor.shapes.pretraining.config import PretrainConfig
from textcraftor.shapes.world import ShapesDataset

log = logging.getLogger("textcraftor.shapes.pretrain")


def batches(dataset: ShapesDataset, batch_size: int, start: int = 0
            ) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(images [B,3,64,64] float in [0,1], captions), endlessly, from item ``start`` on."""
    index = start
    while True:
        images, captions, _ = dataset.batch(index, batch_size)
        index += batch_size
        yield images.float() / 255.0, captions


class Clock:
    """The run's wall-clock cap, shared by the stages."""

    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + 60.0 * minutes

    def out_of_time(self) -> bool:
        return time.monotonic() >= self.deadline


def stage_clock(config: PretrainConfig) -> Clock:
    """The training stages' clock: it runs out ``final_minutes`` before ``max_minutes``, so
    saving, the 64-prompt oracle, the VAE's ceiling and the reliance check (1.0 min measured
    on 2 threads) still finish inside the cap."""
    return Clock(config.max_minutes - config.final_minutes)


def schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 100,
             ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the peak over ``warmup`` steps, then cosine decay to a tenth of
    the peak at ``steps`` (transformers' schedule). The committed weights were trained with a
    hand-written one whose warm-up started at 1/``warmup`` of the peak (DESIGN.md)."""
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=warmup,
                                                       num_training_steps=steps, min_lr_rate=0.1)


def adamw(module: torch.nn.Module, lr: float, steps: int, weight_decay: float = 0.01):
    """AdamW over ``module``'s parameters at peak ``lr``, and its ``schedule`` over ``steps``."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    return optimizer, schedule(optimizer, steps)


def descend(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
            lr: torch.optim.lr_scheduler.LRScheduler) -> float:
    """One optimizer step on ``loss`` (a scalar) and one schedule step; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    lr.step()
    return loss.item()


def run_stage(name: str, steps: int, clock: Clock, step: Callable[[int], float],
              every: int = 0, check: Callable[[int], dict] | None = None) -> dict:
    """Call ``step(i)`` (returns the loss) ``steps`` times or until the clock runs out;
    ``check(i)`` every ``every`` steps adds a progress record."""
    started, losses, progress = time.monotonic(), [], []
    i = 0
    while i < steps and not clock.out_of_time():
        losses.append(step(i))
        i += 1
        if i % 100 == 0:
            log.info("%s step %d: loss %.4f", name, i, sum(losses[-100:]) / 100)
        if check is not None and every and i % every == 0 and i < steps:
            progress.append({"step": i, **check(i)})
            log.info("%s step %d: %s", name, i, progress[-1])
    tail = losses[-100:] or [math.nan]
    stats = {"steps": i, "planned_steps": steps, "seconds": round(time.monotonic() - started, 1),
             "first_loss": losses[0] if losses else math.nan, "last_loss": sum(tail) / len(tail)}
    return {**stats, "progress": progress} if progress else stats
