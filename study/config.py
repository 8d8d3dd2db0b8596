"""The study's configuration: what every trial shares (``base``), what is searched, and how."""

from __future__ import annotations

import difflib
import math
import os
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from study.objectives import OBJECTIVES
from textcraftor.config import (
    ALIGNMENT,
    DIVERSITY,
    QUALITY_REWARDS,
    RunConfig,
    estimator_of,
    for_estimator,
)
from textcraftor.configio import (
    ConfigError,
    apply_overrides,
    from_dict,
    get_path,
    leaf_paths,
    path_annotation,
    read_yaml,
    require,
    require_choice,
    set_path,
    to_dict,
)
from textcraftor.dial_grid import FINETUNED_STEP_NAMES

SAMPLERS = ("tpe", "gp", "nsga2", "random", "grid")  # grid: Optuna's GridSampler, every
#                                                       combination of the searched choices once
# Optuna's own defaults: TPE and GP sample this many trials at random before their model
# (n_startup_trials); NSGA-II's first generation (population_size trials) is random
OPTUNA_STARTUP_TRIALS = 10
OPTUNA_POPULATION_SIZE = 50
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
SCHEDULERS = ("fifo", "asha", "moasha")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


@dataclass(frozen=True)
class Distribution:
    """How one searched run-config field is drawn: a range (``low``/``high``, uniform or
    log-uniform; integers when the field is an int or ``integer: true``) or ``choices`` (a
    categorical: strings, numbers, booleans). Optuna's suggest_float / suggest_int /
    suggest_categorical draw it."""

    low: float | None = None  # lower end of a range (inclusive)
    high: float | None = None  # upper end of a range (inclusive)
    log: bool = False  # log-uniform range (needs low > 0)
    integer: bool = False  # integers only (implied for an int field)
    choices: tuple[Any, ...] | None = None  # categorical values, instead of a range

    def kind(self, annotation: Any) -> str:
        """categorical | int | float, for the field's type ``annotation``."""
        if self.choices is not None:
            return "categorical"
        return "int" if self.integer or annotation is int else "float"

    def check(self, field_name: str, annotation: Any) -> None:
        """Raise ConfigError naming ``field_name`` for a malformed distribution."""
        if self.choices is not None:
            require(self.low is None and self.high is None and not self.log, field_name,
                    "give choices or low/high, not both")
            require(len(self.choices) > 0, f"{field_name}.choices", "empty: give at least one")
            for index, choice in enumerate(self.choices):
                require(choice is None or isinstance(choice, (bool, int, float, str)),
                        f"{field_name}.choices[{index}]",
                        f"{choice!r}: Optuna's categoricals are strings, numbers, booleans")
            return
        require(annotation in (int, float), field_name,
                f"a range needs a numeric field, and this one is {_type_name(annotation)}: "
                f"give choices: [...] instead")
        require(self.low is not None and self.high is not None, field_name,
                "needs both low and high (or choices)")
        require(self.low <= self.high, field_name, f"low ({self.low}) > high ({self.high})")
        require(not self.log or self.low > 0, field_name, "log=true needs low > 0")
        if self.kind(annotation) == "int":
            require(float(self.low).is_integer() and float(self.high).is_integer(), field_name,
                    f"an int range needs integer bounds, got {self.low}..{self.high}")

    def values_to_check(self, annotation: Any) -> list[tuple[str, Any]]:
        """(sub-field, value) pairs that must each pass the run config's validation: every
        choice, or both ends of the range."""
        if self.choices is not None:
            return [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]
        cast = int if self.kind(annotation) == "int" else float
        return [("low", cast(self.low)), ("high", cast(self.high))]

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _default_search() -> Mapping[str, Distribution]:
    return types.MappingProxyType({
        "reward.weights.aesthetic": Distribution(low=0.1, high=2.0),
        "reward.clip_constraint": Distribution(low=0.0, high=2.0),
        "sample.k": Distribution(low=1, high=5),
    })


# the gradient estimator: a trial suggests the paths only one estimator reads
# (textcraftor.config.estimator_of) only when it runs that estimator
ESTIMATOR_PATH = "sample.truncation"


def run_config_paths(base: RunConfig) -> list[str]:
    """Every searchable path: the base's values, plus a weight and a scale for each reward."""
    paths = leaf_paths(to_dict(base))
    paths += [f"reward.{section}.{name}" for section in ("weights", "scales")
              for name in (*QUALITY_REWARDS, "clip") if not (section == "weights"
                                                             and name == "clip")]
    return list(dict.fromkeys(paths))


def search_variants(search: Mapping[str, Distribution], base: RunConfig
                    ) -> list[tuple[str, Any, RunConfig]]:
    """The base config with each searched path at each of its choices, or at both ends of its
    range: (path, value, run config), each built and validated as a YAML value would be.
    Raises ConfigError naming ``search.<path>.<choices[i]|low|high>`` and the refused value."""
    data, variants = to_dict(base), []
    estimators = search.get(ESTIMATOR_PATH)
    reachable = {base.sample.truncation, *(estimators.choices or () if estimators else ())}
    for path, distribution in search.items():
        owner = estimator_of(path)
        require(owner is None or owner in reachable, f"search.{path}",
                f"only sample.truncation={owner} reads it, which this study never runs "
                f"(base.sample.truncation={base.sample.truncation}"
                + (f", searched among {list(estimators.choices)})" if estimators else
                   ", not searched)"))
        for sub, value in distribution.values_to_check(path_annotation(RunConfig, path)):
            # a variant runs the estimator that reads the path (the trials that draw it do)
            start = (for_estimator(data, value) if path == ESTIMATOR_PATH else
                     for_estimator(data, owner) if owner not in (None, base.sample.truncation)
                     else data)
            try:
                run = from_dict(RunConfig, set_path(start, path, value, RunConfig))
            except ConfigError as error:
                raise ConfigError(f"search.{path}.{sub}: {value!r} is refused by the run "
                                  f"config: {error}") from None
            variants.append((path, value, run))
    return variants


def check_search(search: Mapping[str, Distribution], base: RunConfig,
                 reference_first: bool) -> None:
    """Each searched path is a run-config field, its distribution fits the field's type, every
    choice (or both ends of the range) passes the run config's validation
    (``search_variants``), and, when the base values are the first trial, the base value lies
    in the distribution. Raises ConfigError naming ``search.<path>`` (and the closest valid
    path for an unknown one)."""
    for path, distribution in search.items():
        try:
            annotation = path_annotation(RunConfig, path)
        except ConfigError as error:
            close = difflib.get_close_matches(path, run_config_paths(base), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"search.{path}: {str(error).split(': ', 1)[1]} of the run "
                              f"config{hint}") from None
        distribution.check(f"search.{path}", annotation)
    search_variants(search, base)
    if not reference_first:
        return
    data = to_dict(base)
    for path, distribution in search.items():
        if estimator_of(path) not in (None, base.sample.truncation):
            continue  # the base's trial does not run the estimator that reads it
        try:
            value = get_path(data, path, RunConfig)
        except KeyError:
            raise ConfigError(f"search.{path}: base.{path} is not set, and the base config's "
                              f"values are the first trial (tuner.reference_first); set "
                              f"base.{path}") from None
        require(distribution.contains(value), f"search.{path}",
                f"base.{path} = {value!r} is the first trial (tuner.reference_first) but lies "
                f"outside this distribution; set base.{path} inside it")


def grid_points(search: Mapping[str, Distribution]) -> dict[str, list[Any]]:
    """tuner.sampler grid's space: every searched path's choices (Optuna's GridSampler)."""
    return {path: list(distribution.choices or ()) for path, distribution in search.items()}


def check_grid(search: Mapping[str, Distribution], base: RunConfig, num_samples: int) -> None:
    """tuner.sampler grid: every searched path categorical and read by every trial (a field of
    one estimator only when the base runs it and sample.truncation is not searched), and
    tuner.num_samples the number of combinations (each drawn once). Raises ConfigError naming
    the field."""
    fixed = None if ESTIMATOR_PATH in search else base.sample.truncation
    for path, distribution in search.items():
        require(distribution.choices is not None, f"search.{path}",
                "tuner.sampler grid needs choices: [...] (a range has no grid)")
        require(estimator_of(path) in (None, fixed), f"search.{path}",
                f"tuner.sampler grid: only sample.truncation={estimator_of(path)} reads it, and "
                f"a grid point must apply to every trial; fix it in base, or use tpe")
    size = math.prod(len(choices) for choices in grid_points(search).values())
    require(num_samples == size, "tuner.num_samples",
            f"tuner.sampler grid has {size} combinations of the searched choices, each drawn "
            f"once: set num_samples {size}, got {num_samples}")


@dataclass(frozen=True)
class ObjectiveConfig:
    names: tuple[str, ...] = ("quality", "diversity")  # any of quality, diversity, alignment
    #                                                    (study.objectives), all maximised
    quality_weights: Mapping[str, float] = field(  # fixed weights of the quality score, the
        default_factory=lambda: types.MappingProxyType({"aesthetic": 1.0}))  # same for all trials
    alignment: str = "auto"  # what alignment is: oracle (ShapesWorld's oracle accuracy) | clip
    #                          (CLIP score) | auto: the oracle where there is one (eval.alignment)
    diversity: str = "auto"  # what diversity is: attributes (the oracle's) | lpips | clip | auto:
    #                          LPIPS with its trained trunk, else clip (the distance of the run's
    #                          CLIP image embeddings; the runs' eval.diversity_metric)

    def __post_init__(self) -> None:
        require(len(self.names) >= 1, "objectives.names",
                f"needs at least one of {OBJECTIVES}")
        require(len(set(self.names)) == len(self.names), "objectives.names", "duplicates")
        for name in self.names:
            require_choice(name, "objectives.names", OBJECTIVES)
        object.__setattr__(self, "quality_weights", types.MappingProxyType(
            dict(self.quality_weights)))
        require(any(w > 0 for w in self.quality_weights.values()), "objectives.quality_weights",
                "needs a positive weight")
        for name in self.quality_weights:
            require_choice(name, "objectives.quality_weights", QUALITY_REWARDS)
        require_choice(self.alignment, "objectives.alignment", ALIGNMENT)
        require_choice(self.diversity, "objectives.diversity", DIVERSITY)


@dataclass(frozen=True)
class DialConfig:
    """The inference dials every trial that finishes its training is evaluated at
    (``textcraftor.dials``): no training, the same held-out prompts and seeds."""

    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # interpolation weights a of
    #   E(a) = a·E_ft + (1−a)·E_orig, each in [0, 1]; () = no dials
    finetuned_steps: tuple[int | str, ...] = ("k_train", "half", "all")  # M: the last M of T
    #   sampling steps use E(a): ints in [1, T], or k_train (the trial's K), half (T // 2), all

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        for index, alpha in enumerate(self.alphas):
            require(0.0 <= alpha <= 1.0, f"dials.alphas[{index}]",
                    f"{alpha} lies outside [0, 1] (0 = the original encoder, 1 = the "
                    "fine-tuned one)")
        require(not self.alphas or bool(self.finetuned_steps), "dials.finetuned_steps",
                "empty: give at least one M (e.g. all), or alphas: [] for no dials")
        for index, value in enumerate(self.finetuned_steps):
            if isinstance(value, str):
                require_choice(value, f"dials.finetuned_steps[{index}]", FINETUNED_STEP_NAMES)
            else:
                require(not isinstance(value, bool) and int(value) == value and value >= 1,
                        f"dials.finetuned_steps[{index}]",
                        f"{value!r} is not an int >= 1 or one of {FINETUNED_STEP_NAMES}")

    @property
    def enabled(self) -> bool:
        return bool(self.alphas)

    def check(self, study: StudyConfig) -> None:
        """Each int M within [1, T] for every T the study can draw (sample.num_steps, searched
        or not), and k_train only where a trial trains a chain: ConfigError naming the entry."""
        if not self.enabled:
            return
        searched = study.search.get("sample.num_steps")
        lowest = study.base.sample.num_steps
        if searched is not None:
            lowest = int(min(searched.choices) if searched.choices is not None
                         else searched.low)
        for index, value in enumerate(self.finetuned_steps):
            if isinstance(value, str):
                continue
            require(value <= lowest, f"dials.finetuned_steps[{index}]",
                    f"{value} lies outside [1, T] for T = sample.num_steps = {lowest}"
                    + (" (the lowest the search draws)" if searched is not None else ""))
        truncations = study.search.get("sample.truncation")
        only_direct = (study.base.sample.truncation == "direct" if truncations is None
                       else set(truncations.choices or ()) == {"direct"})
        require(not ("k_train" in self.finetuned_steps and only_direct),
                "dials.finetuned_steps", "k_train: truncation direct trains no DDIM chain (no "
                "K); give ints, half or all")


@dataclass(frozen=True)
class TunerConfig:
    sampler: str = "tpe"  # tpe | gp | nsga2 | random | grid (Optuna's TPE, GP, NSGA-II, random
    #                       and grid samplers; grid: categorical paths only, each combination once)
    seed: int = 0  # sampler seed
    n_startup_trials: int | None = None  # tpe/gp: random trials before the model (None: 10)
    population_size: int | None = None  # nsga2: trials per generation, the first random (None: 50)
    num_samples: int = 4  # configurations the sampler draws (trials: num_samples × repeats)
    repeats: int = 1  # trials per configuration, each with its own training seed (train.seed
    #                   + repeat index); the sampler is told the repeats' mean
    max_concurrent: int = 1  # trials at once
    scheduler: str = "fifo"  # fifo | asha (one objective) | moasha (multi-objective ASHA)
    rungs: tuple[int, ...] = ()  # moasha: training steps at which trials are ranked (evaluation
    #                              steps below base.train.steps; () = every one of them)
    reduction_factor: float = 3.0  # moasha: η, each rung keeps the best 1/η
    reference_first: bool = True  # the base config's values of the searched fields are the
    #                               first trial (the reference recipe, in one place: the YAML)
    storage: str | None = None  # Optuna RDB URL; default sqlite in the sweep folder

    def __post_init__(self) -> None:
        require_choice(self.sampler, "tuner.sampler", SAMPLERS)
        require_choice(self.scheduler, "tuner.scheduler", SCHEDULERS)
        require(self.num_samples >= 1, "tuner.num_samples", f"must be >= 1, got {self.num_samples}")
        require(self.max_concurrent >= 1, "tuner.max_concurrent",
                f"must be >= 1, got {self.max_concurrent}")
        require(self.repeats >= 1, "tuner.repeats", f"must be >= 1, got {self.repeats}")
        require(self.repeats == 1 or self.scheduler == "fifo", "tuner.repeats",
                f"{self.repeats} repeats need scheduler fifo: an early-stopping scheduler "
                f"({self.scheduler!r}) would judge each repeat alone, not the configuration")
        require(self.scheduler == "moasha" or not self.rungs, "tuner.rungs",
                f"applies to scheduler moasha, not {self.scheduler!r}")
        require(self.reduction_factor >= 2, "tuner.reduction_factor",
                f"must be >= 2 (each rung keeps the best 1/η), got {self.reduction_factor}")
        require(self.sampler != "grid" or not self.reference_first, "tuner.reference_first",
                "sampler grid visits every combination once, the base's among them: set "
                "reference_first false (an extra first trial would run the base's twice)")
        if self.n_startup_trials is not None:
            require(self.sampler in ("tpe", "gp"), "tuner.n_startup_trials",
                    f"applies to sampler tpe or gp, not {self.sampler!r}")
            require(self.n_startup_trials >= 1, "tuner.n_startup_trials",
                    f"must be >= 1, got {self.n_startup_trials}")
        if self.population_size is not None:
            require(self.sampler == "nsga2", "tuner.population_size",
                    f"applies to sampler nsga2, not {self.sampler!r}")
            require(self.population_size >= 2, "tuner.population_size",
                    f"must be >= 2, got {self.population_size}")

    @property
    def num_trials(self) -> int:
        """Ray Tune trials of the study: every configuration, every repeat."""
        return self.num_samples * self.repeats

    def random_trials(self) -> int:
        """How many trials the sampler draws at random before it uses what it has seen: the
        start-up trials of TPE/GP, NSGA-II's first generation, every trial of random."""
        if self.sampler in ("tpe", "gp"):
            return self.n_startup_trials or OPTUNA_STARTUP_TRIALS
        if self.sampler == "nsga2":
            return self.population_size or OPTUNA_POPULATION_SIZE
        return 0 if self.sampler == "grid" else self.num_samples

    def random_search_warning(self) -> str | None:
        """A warning when every trial falls in the sampler's random start (the study is random
        search), naming the fields that change it; None when the sampler gets to search."""
        start = self.random_trials()
        if self.sampler in ("random", "grid") or self.num_samples > start:
            return None
        field = "tuner.population_size" if self.sampler == "nsga2" else "tuner.n_startup_trials"
        return (f"tuner.num_samples = {self.num_samples} <= the {start} random trials "
                f"tuner.sampler = {self.sampler} draws first ({field}): this study is random "
                f"search. Raise tuner.num_samples above {start}, or lower {field} (e.g. to "
                f"{max(2 if self.sampler == 'nsga2' else 1, self.num_samples // 2)}).")

@dataclass(frozen=True)
class ResourcesConfig:
    num_workers: int = 2  # Ray Train (DDP) workers per trial; 0: one rank in the trial process
    cpus_per_worker: float = 0.5  # fractional CPUs fit several processes on a small machine
    gpus_per_worker: float = 0.0  # GPUs per worker (1 on a GPU cluster)
    trial_cpus: float = 0.1  # the Tune trial process that drives the TorchTrainer
    max_failures: int = 2  # Ray Train restarts of a failed worker group (from its checkpoint)
    torch_threads: int = 0  # intra-op threads per worker; 0 = max(1, cpus_per_worker)
    placement_strategy: str = "PACK"  # Ray placement of a trial's workers (SPREAD: across nodes)
    trial_resources: Mapping[str, float] = field(  # custom resources of the trial process, e.g.
        default_factory=lambda: types.MappingProxyType({}))  # {head_node: 0.01}: on the head

    def __post_init__(self) -> None:
        require(self.num_workers >= 0, "resources.num_workers",
                f"must be >= 0 (0: one rank inside the Tune trial process, Ray Train's local "
                f"mode), got {self.num_workers}")
        require(self.cpus_per_worker > 0, "resources.cpus_per_worker", "must be > 0")
        require(self.gpus_per_worker >= 0, "resources.gpus_per_worker", "must be >= 0")
        require(self.trial_cpus > 0, "resources.trial_cpus", "must be > 0")
        require(self.max_failures >= 0, "resources.max_failures", "must be >= 0")
        require_choice(self.placement_strategy, "resources.placement_strategy",
                       PLACEMENT_STRATEGIES)
        object.__setattr__(self, "trial_resources", types.MappingProxyType(
            {str(k): float(v) for k, v in self.trial_resources.items()}))
        for name, amount in self.trial_resources.items():
            require(amount > 0 and name not in ("CPU", "GPU"),
                    f"resources.trial_resources.{name}",
                    "custom resources only (CPU is trial_cpus), each > 0")

    @property
    def in_process(self) -> bool:
        """The trial's one rank runs in the Tune trial process (``num_workers: 0``)."""
        return self.num_workers == 0

    def trial_bundle(self) -> dict[str, float]:
        """What the Tune trial process itself holds (in-process: its rank's resources too)."""
        if not self.in_process:
            return {"CPU": self.trial_cpus, **self.trial_resources}
        bundle = {"CPU": self.trial_cpus + self.cpus_per_worker, **self.trial_resources}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        return bundle

    def bundles(self) -> list[dict[str, float]]:
        """Every resource bundle one trial holds: its own, then each worker's."""
        return [self.trial_bundle()] + [self.worker_bundle()] * self.num_workers

    def worker_bundle(self) -> dict[str, float]:
        """What each Ray Train worker holds."""
        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        return bundle


@dataclass(frozen=True)
class FaultInjection:
    """Testing aid: a fault in the trials whose searched field ``param`` equals ``value`` (every
    trial when ``param`` is not given)."""

    param: str | None = None  # a searched run-config path, e.g. sample.k; none: all trials
    value: Any = None  # the value that marks a trial
    nan_at_step: int = 0  # the loss becomes NaN at this step: the trial fails (0 = never)
    crash_once_at_step: int = 0  # rank 0 raises just before it reports this step's checkpoint,
    #   once per sweep (a marker file in the sweep folder), so Ray Train restarts the worker
    #   group from the previous committed checkpoint (0 = never; a checkpoint step)
    pause_once_after_step: int = 0  # rank 0 waits (up to 600 s) after reporting this step's
    #   checkpoint, once per sweep (a marker file): a test can see the commit and then fail a
    #   node at a known step (0 = never; a checkpoint step before base.train.steps)
    dial_error: bool = False  # the trial's inference dials raise (the trial itself finishes)

    def matches(self, params: Mapping[str, Any]) -> bool:
        """Whether a trial with these hyperparameters (by path) gets the fault."""
        if self.param is None:
            return True
        if self.param not in params:  # a field of an estimator this trial does not run
            return False
        value = params[self.param]
        if isinstance(value, (int, float)) and isinstance(self.value, (int, float)):
            return float(value) == float(self.value)
        return value == self.value

    def check(self, field_name: str, study: StudyConfig) -> None:
        if self.param is not None:
            require_choice(self.param, f"{field_name}.param", tuple(study.search))
            require(self.value is not None, f"{field_name}.value", "needed with param")
        require(min(self.nan_at_step, self.crash_once_at_step, self.pause_once_after_step) >= 0,
                field_name, "steps must be >= 0")
        require(self.nan_at_step > 0 or self.crash_once_at_step > 0
                or self.pause_once_after_step > 0 or self.dial_error, field_name,
                "set nan_at_step, crash_once_at_step or pause_once_after_step (> 0), or "
                "dial_error")
        crash, train = self.crash_once_at_step, study.base.train
        require(not crash or (crash <= train.steps and (crash % train.save_every == 0
                                                        or crash == train.steps)),
                f"{field_name}.crash_once_at_step",
                f"{crash} is not a checkpoint step (a multiple of base.train.save_every="
                f"{train.save_every}, or base.train.steps={train.steps})")
        pause = self.pause_once_after_step
        require(not pause or (pause < train.steps and pause % train.save_every == 0),
                f"{field_name}.pause_once_after_step",
                f"{pause} is not a checkpoint step before the last (a multiple of "
                f"base.train.save_every={train.save_every} below base.train.steps={train.steps})")


def moasha_rungs(study: StudyConfig) -> tuple[int, ...]:
    """MO-ASHA's rungs, checked: evaluation steps (multiples of base.train.eval_every) below
    base.train.steps, increasing; ``tuner.rungs: []`` means every such step. Raises ConfigError
    naming the field, the value and what is allowed."""
    train = study.base.train
    for path in ("train.steps", "train.eval_every"):
        require(path not in study.search, f"search.{path}",
                "MO-ASHA's rungs are fixed training steps: keep base." + path + " fixed")
    allowed = (list(range(train.eval_every, train.steps, train.eval_every)) if train.eval_every
               else [])
    require(bool(allowed), "tuner.scheduler",
            f"moasha ranks trials at evaluation steps below base.train.steps={train.steps}, and "
            f"base.train.eval_every={train.eval_every} gives none: lower eval_every")
    rungs = tuple(study.tuner.rungs) or tuple(allowed)
    require(len(rungs) <= len(allowed), "tuner.rungs",
            f"{len(rungs)} rungs but only {len(allowed)} evaluation steps below "
            f"base.train.steps={train.steps}: {allowed}")
    for index, rung in enumerate(rungs):
        require(rung in allowed, f"tuner.rungs[{index}]",
                f"{rung} is not an evaluation step below base.train.steps={train.steps} "
                f"(multiples of base.train.eval_every={train.eval_every}): one of {allowed}")
    require(list(rungs) == sorted(set(rungs)), "tuner.rungs",
            f"{list(rungs)}: give distinct steps in increasing order")
    return rungs


@dataclass(frozen=True)
class StudyConfig:
    name: str = "default"  # sweep name: folder, MLflow parent run, Optuna study
    base: RunConfig = field(default_factory=RunConfig)  # what every trial shares
    search: Mapping[str, Distribution] = field(  # run-config path → how the trials vary it
        default_factory=_default_search)
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # what is maximised
    dials: DialConfig = field(default_factory=DialConfig)  # inference dials of finished trials
    tuner: TunerConfig = field(default_factory=TunerConfig)  # Optuna + Tune settings
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)  # per trial
    results_dir: str = "sweeps"  # <results_dir>/<name>/: summary.json, Ray and Optuna state; a
    #                              URI (s3://…) keeps Ray Tune/Train state there, the rest local
    tracking_uri: str | None = None  # MLflow; default MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    experiment: str = "textcraftor-study"  # MLflow experiment
    fault_injection: tuple[FaultInjection, ...] | FaultInjection | None = ()  # testing: faults
    #                                        in chosen trials (one mapping or a list of them)

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "name", "a non-empty folder name")
        object.__setattr__(self, "search", types.MappingProxyType(dict(self.search)))
        require(bool(self.search), "search",
                "empty search space: give at least one run-config path a distribution")
        require(self.tuner.scheduler != "asha" or len(self.objectives.names) == 1,
                "tuner.scheduler", "asha supports one objective only; use fifo with two")
        check_search(self.search, self.base, self.tuner.reference_first)
        if self.tuner.sampler == "grid":
            check_grid(self.search, self.base, self.tuner.num_samples)
        if self.tuner.scheduler == "moasha":
            object.__setattr__(self, "tuner", replace(self.tuner, rungs=moasha_rungs(self)))
        own = dict(self.base.eval.quality_weights)
        require(not own or own == dict(self.objectives.quality_weights),
                "base.eval.quality_weights", f"{own} differs from objectives.quality_weights: "
                "a study scores every run with its objectives.quality_weights; leave it unset")
        require("diversity" not in self.objectives.names or self.base.eval.diversity,
                "objectives.names", "diversity needs base.eval.diversity=true")
        require(self.objectives.diversity != "attributes" or self.base.oracle_on(),
                "objectives.diversity", f"attributes (read by ShapesWorld's oracle) needs the "
                f"oracle, and base.model.source={self.base.model.source} with "
                f"base.eval.oracle={self.base.eval.oracle} has none: use lpips, clip or auto")
        require(self.objectives.alignment != "oracle" or self.base.oracle_on(),
                "objectives.alignment", f"the alignment objective as the oracle's accuracy "
                f"needs ShapesWorld's oracle, and base.model.source={self.base.model.source} "
                f"with base.eval.oracle={self.base.eval.oracle} has none: use clip (the CLIP "
                f"score) or auto")
        self.dials.check(self)
        faults = self.fault_injection
        faults = (faults,) if isinstance(faults, FaultInjection) else tuple(faults or ())
        object.__setattr__(self, "fault_injection", faults)
        for index, fault in enumerate(faults):
            fault.check(f"fault_injection[{index}]" if len(faults) > 1 else "fault_injection",
                        self)

    @property
    def remote_results(self) -> bool:
        return "://" in self.results_dir

    @property
    def sweep_dir(self) -> Path:
        """The driver's local folder: summary.json, optuna.db, the baseline; and, for a local
        results_dir, Ray's state and the trials' run folders (a shared file system on a
        cluster). With a URI results_dir: $TEXTCRAFTOR_LOCAL_SWEEPS (~/textcraftor-sweeps)."""
        if self.remote_results:
            local = os.environ.get("TEXTCRAFTOR_LOCAL_SWEEPS", "~/textcraftor-sweeps")
            return Path(local).expanduser().resolve() / self.name
        return Path(self.results_dir).expanduser().resolve() / self.name

    @property
    def storage_dir(self) -> str:
        """Where Ray Tune and Ray Train persist state and checkpoints: every node reaches it."""
        if self.remote_results:
            return f"{self.results_dir.rstrip('/')}/{self.name}"
        return str(self.sweep_dir)


def default_config_path() -> Path:
    return Path(str(resources.files("study") / "configs" / "default.yaml"))


def load_study_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                      **fields: Any) -> StudyConfig:
    """The YAML study (default: the embedded one), then ``--set`` overrides (walked through the
    ``StudyConfig`` fields, so ``base.reward.weights.hpsv2.1=0.5`` names reward ``hpsv2.1``),
    then CLI fields."""
    data = read_yaml(path or default_config_path())
    data = apply_overrides(data, overrides, schema=StudyConfig)
    data.update({k: v for k, v in fields.items() if v is not None})
    try:
        study = from_dict(StudyConfig, data)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
    for item in overrides:
        key = item.partition("=")[0]
        for searched in study.search:
            if key == f"base.{searched}" or f"base.{searched}".startswith(f"{key}."):
                raise ConfigError(f"--set {item!r}: base.{searched} is searched "
                                  f"(search.{searched}): every trial draws its own value, so "
                                  f"a fixed one cannot hold; drop the --set (the YAML's base "
                                  f"value is the first trial) or drop search.{searched}")
    return study
