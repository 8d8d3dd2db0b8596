"""The study's configuration: what every trial shares (``base``), what is searched, and how."""

from __future__ import annotations

import os
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from textcraftor.config import QUALITY_REWARDS, RunConfig
from textcraftor.configio import (
    ConfigError,
    apply_overrides,
    from_dict,
    read_yaml,
    require,
    require_choice,
)

SAMPLERS = ("tpe", "nsga2", "random")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
SCHEDULERS = ("fifo", "asha")
OBJECTIVES = ("quality", "diversity")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


@dataclass(frozen=True)
class Param:
    """One hyperparameter: fixed (``value``) or searched over [low, high]."""

    value: float | None = None  # fixed value; leave unset to search
    low: float | None = None  # lower bound of the search range
    high: float | None = None  # upper bound of the search range
    log: bool = False  # search log-uniformly (needs low > 0)

    @property
    def searched(self) -> bool:
        return self.value is None

    def check(self, field_name: str, integer: bool = False) -> None:
        if self.value is not None:
            require(self.low is None and self.high is None, field_name,
                    "give either value (fixed) or low/high (searched), not both")
            return
        require(self.low is not None and self.high is not None, field_name,
                "needs value, or both low and high")
        require(self.low <= self.high, field_name, f"low ({self.low}) > high ({self.high})")
        require(not self.log or self.low > 0, field_name, "log=true needs low > 0")
        if integer:
            require(float(self.low).is_integer() and float(self.high).is_integer(), field_name,
                    "bounds must be integers")


def _fixed(value: float) -> Param:
    return Param(value=value)


@dataclass(frozen=True)
class SearchSpace:
    reward_weights: Mapping[str, Param] = field(  # wᵢ of each quality reward
        default_factory=lambda: types.MappingProxyType({"aesthetic": Param(low=0.1, high=2.0)}))
    clip_constraint: Param = field(  # λ, strength of the CLIP constraint
        default_factory=lambda: Param(low=0.0, high=2.0))
    k: Param = field(default_factory=lambda: Param(low=1, high=5))  # truncation depth K
    lr: Param = field(default_factory=lambda: _fixed(1e-6))  # text-encoder learning rate

    def __post_init__(self) -> None:
        object.__setattr__(self, "reward_weights", types.MappingProxyType(
            dict(self.reward_weights)))
        for name, param in self.reward_weights.items():
            require_choice(name, "search.reward_weights", QUALITY_REWARDS)
            param.check(f"search.reward_weights.{name}")
            require((param.low if param.searched else param.value) >= 0,
                    f"search.reward_weights.{name}", "weights must be >= 0")
        self.clip_constraint.check("search.clip_constraint")
        self.k.check("search.k", integer=True)
        require((self.k.low if self.k.searched else self.k.value) >= 1, "search.k",
                "K must be >= 1")
        self.lr.check("search.lr")

    def params(self) -> dict[str, Param]:
        """Every hyperparameter by its flat name (as Optuna and MLflow see it)."""
        named = {f"w_{n}": p for n, p in self.reward_weights.items()}
        return {**named, "clip_constraint": self.clip_constraint, "k": self.k, "lr": self.lr}

    def searched(self) -> dict[str, Param]:
        return {n: p for n, p in self.params().items() if p.searched}


@dataclass(frozen=True)
class ObjectiveConfig:
    names: tuple[str, ...] = OBJECTIVES  # quality and/or diversity, both maximised
    quality_weights: Mapping[str, float] = field(  # fixed weights of the quality score, the
        default_factory=lambda: types.MappingProxyType({"aesthetic": 1.0}))  # same for all trials

    def __post_init__(self) -> None:
        require(len(self.names) >= 1, "objectives.names", f"needs one or two of {OBJECTIVES}")
        require(len(set(self.names)) == len(self.names), "objectives.names", "duplicates")
        for name in self.names:
            require_choice(name, "objectives.names", OBJECTIVES)
        object.__setattr__(self, "quality_weights", types.MappingProxyType(
            dict(self.quality_weights)))
        require(any(w > 0 for w in self.quality_weights.values()), "objectives.quality_weights",
                "needs a positive weight")
        for name in self.quality_weights:
            require_choice(name, "objectives.quality_weights", QUALITY_REWARDS)


@dataclass(frozen=True)
class TunerConfig:
    sampler: str = "tpe"  # tpe | nsga2 | random (Optuna samplers)
    seed: int = 0  # sampler seed
    num_samples: int = 4  # trials
    max_concurrent: int = 1  # trials at once
    scheduler: str = "fifo"  # fifo | asha (asha: one objective only)
    reference_first: bool = True  # the reference recipe's point as the first trial
    storage: str | None = None  # Optuna RDB URL; default sqlite in the sweep folder

    def __post_init__(self) -> None:
        require_choice(self.sampler, "tuner.sampler", SAMPLERS)
        require_choice(self.scheduler, "tuner.scheduler", SCHEDULERS)
        require(self.num_samples >= 1, "tuner.num_samples", f"must be >= 1, got {self.num_samples}")
        require(self.max_concurrent >= 1, "tuner.max_concurrent",
                f"must be >= 1, got {self.max_concurrent}")


@dataclass(frozen=True)
class ResourcesConfig:
    num_workers: int = 2  # Ray Train (DDP) workers per trial
    cpus_per_worker: float = 0.5  # fractional CPUs fit several processes on a small machine
    gpus_per_worker: float = 0.0  # GPUs per worker (1 on a GPU cluster)
    trial_cpus: float = 0.1  # the Tune trial process that drives the TorchTrainer
    max_failures: int = 2  # Ray Train restarts of a failed worker group (from its checkpoint)
    torch_threads: int = 0  # intra-op threads per worker; 0 = max(1, cpus_per_worker)
    placement_strategy: str = "PACK"  # Ray placement of a trial's workers (SPREAD: across nodes)
    trial_resources: Mapping[str, float] = field(  # custom resources of the trial process, e.g.
        default_factory=lambda: types.MappingProxyType({}))  # {head_node: 0.01}: on the head

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, "resources.num_workers",
                f"must be >= 1, got {self.num_workers}")
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

    def trial_bundle(self) -> dict[str, float]:
        """What the Tune trial process itself holds."""
        return {"CPU": self.trial_cpus, **self.trial_resources}

    def worker_bundle(self) -> dict[str, float]:
        """What each Ray Train worker holds."""
        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        return bundle


@dataclass(frozen=True)
class FaultInjection:
    """Testing aid: a fault in the trials whose hyperparameter ``param`` equals ``value`` (every
    trial when ``param`` is not given)."""

    param: str | None = None  # flat hyperparameter name, e.g. k or w_aesthetic; none: all trials
    value: float | None = None  # the value that marks a trial
    nan_at_step: int = 0  # the loss becomes NaN at this step: the trial fails (0 = never)
    crash_once_at_step: int = 0  # rank 0 raises just before it reports this step's checkpoint,
    #   once per sweep (a marker file in the sweep folder), so Ray Train restarts the worker
    #   group from the previous committed checkpoint (0 = never; a checkpoint step)

    def matches(self, params: Mapping[str, Any]) -> bool:
        """Whether a trial with these hyperparameters (flat names) gets the fault."""
        return self.param is None or float(params[self.param]) == float(self.value)

    def check(self, field_name: str, study: StudyConfig) -> None:
        if self.param is not None:
            require_choice(self.param, f"{field_name}.param", tuple(study.search.params()))
            require(self.value is not None, f"{field_name}.value", "needed with param")
        require(self.nan_at_step >= 0 and self.crash_once_at_step >= 0, field_name,
                "steps must be >= 0")
        require(self.nan_at_step > 0 or self.crash_once_at_step > 0, field_name,
                "set nan_at_step or crash_once_at_step (> 0)")
        crash, train = self.crash_once_at_step, study.base.train
        require(not crash or (crash <= train.steps and (crash % train.save_every == 0
                                                        or crash == train.steps)),
                f"{field_name}.crash_once_at_step",
                f"{crash} is not a checkpoint step (a multiple of base.train.save_every="
                f"{train.save_every}, or base.train.steps={train.steps})")


@dataclass(frozen=True)
class StudyConfig:
    name: str = "default"  # sweep name: folder, MLflow parent run, Optuna study
    base: RunConfig = field(default_factory=RunConfig)  # what every trial shares
    search: SearchSpace = field(default_factory=SearchSpace)  # what the trials vary
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # what is maximised
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
        require(bool(self.search.searched()), "search",
                "empty search space: every parameter is fixed (give low/high to one)")
        require(self.tuner.scheduler != "asha" or len(self.objectives.names) == 1,
                "tuner.scheduler", "asha supports one objective only; use fifo with two")
        t = self.base.sample.num_steps
        k_high = self.search.k.high if self.search.k.searched else self.search.k.value
        require(k_high <= t, "search.k", f"K up to {k_high} exceeds sample.num_steps={t}")
        require("diversity" not in self.objectives.names or self.base.eval.diversity,
                "objectives.names", "diversity needs base.eval.diversity=true")
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
        return from_dict(StudyConfig, data)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
