"""The image-task evaluation's settings and their checks, in plain Python: a bad value is named
(option, value, what is allowed) before torch, diffusers or any weight loads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from textcraftor.configio import ConfigError

TASKS = ("recolour", "inpaint")  # every task the command can run
RESOLUTION = 64  # side in pixels of ShapesWorld's images, and of its models' samples


@dataclass(frozen=True)
class TaskConfig:
    """One evaluation of the base and the tuned text encoder on the editing tasks; each field
    is the command's option of the same name (``--items``, ``--strengths``…)."""

    model: str = "shapes"  # model.source: a ShapesWorld preset (only its world has an oracle)
    text_encoder_from: str = ""  # run or checkpoint folder whose tuned text encoder is compared
    tasks: tuple[str, ...] = TASKS  # which tasks run, a subset of TASKS
    items: int = 32  # scenes per task: the paired unit the intervals resample
    seeds: tuple[int, ...] = (0, 1)  # noise seeds per scene (torch.Generator), both encoders
    strengths: tuple[float, ...] = (0.5, 0.7, 0.9)  # img2img strengths s, each in (0, 1]
    inpaint_strength: float = 1.0  # inpainting strength in (0, 1]; 1: the mask starts as noise
    num_steps: int = 10  # T, DDIM steps of a whole chain; strength s runs int(s·T) of them
    guidance_scale: float = 5.0  # classifier-free guidance w (the OQ1 recipe's 5)
    item_seed: int = 0  # which scenes: item i of a task is a function of (item_seed, task, i)
    batch_size: int = 16  # images per pipeline call; no result depends on it
    device: str = "auto"  # auto (cuda when available), cpu, cuda or cuda:N

    def __post_init__(self) -> None:
        check_config(self)


def check_config(config: TaskConfig) -> None:
    """Raise ConfigError naming the option (``--strengths``…), its value and what is allowed,
    for the first value that is wrong."""
    _require(bool(config.tasks), "--tasks", "(empty)", f"one or more of {', '.join(TASKS)}")
    for task in config.tasks:
        _require(task in TASKS, "--tasks", repr(task), f"one of {', '.join(TASKS)}")
    _require(len(set(config.tasks)) == len(config.tasks), "--tasks", ",".join(config.tasks),
             "each task once")
    _positive_int(config.items, "--items")
    _positive_int(config.batch_size, "--batch-size")
    _positive_int(config.num_steps, "--num-steps")
    _require(bool(config.seeds), "--seeds", "(empty)", "one or more integers ≥ 0")
    for seed in config.seeds:
        _require(_is_int(seed) and seed >= 0, "--seeds", repr(seed), "integers ≥ 0")
    _require(len(set(config.seeds)) == len(config.seeds), "--seeds",
             ",".join(map(str, config.seeds)), "distinct seeds (a repeated one counts twice)")
    _require(_is_int(config.item_seed) and config.item_seed >= 0, "--item-seed",
             repr(config.item_seed), "an integer ≥ 0")
    if "recolour" in config.tasks:
        _require(bool(config.strengths), "--strengths", "(empty)", "one or more in (0, 1]")
        for strength in config.strengths:
            check_strength(strength, config.num_steps, "--strengths")
        _require(len(set(config.strengths)) == len(config.strengths), "--strengths",
                 ",".join(map(str, config.strengths)), "distinct strengths")
    if "inpaint" in config.tasks:
        check_strength(config.inpaint_strength, config.num_steps, "--inpaint-strength")
    w = config.guidance_scale
    _require(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0, "--guidance-scale",
             repr(w), "a finite number ≥ 0 (guidance applies above 1)")
    device = config.device
    _require(device in ("auto", "cpu", "cuda") or (device.startswith("cuda:")
                                                   and device[5:].isdigit()),
             "--device", repr(device), "auto, cpu, cuda or cuda:N")


def check_strength(strength: float, num_steps: int, option: str = "strength") -> None:
    """Raise ConfigError naming ``option`` unless ``strength`` is a number in (0, 1] that runs
    at least one of the ``num_steps`` DDIM steps. diffusers runs int(strength · num_steps)
    steps (``get_timesteps``): at 0 nothing would be edited, and it refuses a chain of 0 steps
    only after the weights load."""
    ok = isinstance(strength, (int, float)) and not isinstance(strength, bool)
    _require(ok and math.isfinite(strength) and 0.0 < strength <= 1.0, option, repr(strength),
             "a number in (0, 1]: the fraction of the DDIM chain img2img/inpainting re-runs")
    _require(int(strength * num_steps) >= 1, option, repr(strength),
             f"at least 1/--num-steps = {1 / num_steps:g}: int({strength} × {num_steps}) "
             "= 0 denoising steps")


def parse_list(text: str, option: str, kind: type) -> tuple:
    """``"0.5,0.7"`` → (0.5, 0.7) as ``kind`` (int, float or str). Raises ConfigError naming
    ``option`` for an empty item or one that is not a ``kind``."""
    items = [part.strip() for part in text.split(",")]
    if any(not part for part in items):
        raise ConfigError(f"{option}: {text!r} has an empty item; give a comma-separated list "
                          "(e.g. 0.5,0.7,0.9)")
    try:
        return tuple(kind(part) for part in items)
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not a comma-separated list of "
                          f"{kind.__name__} values") from None


def _positive_int(value: int, option: str) -> None:
    _require(_is_int(value) and value >= 1, option, repr(value), "an integer ≥ 1")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, option: str, value: str, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{option}: {value} is not allowed; allowed: {allowed}")


def describe(config: TaskConfig) -> dict:
    """The settings as plain data (lists for tuples), for the output's JSON."""
    return {k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
            for k, v in asdict(config).items()}
