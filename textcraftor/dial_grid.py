"""The inference dials' grid: which settings (a, M) a dial table measures (no torch: the study's
configuration checks it). ``textcraftor.dials`` evaluates them; TextCraftor §3.4, Table 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textcraftor.config import SampleConfig

# named values of M: the K the run trained with (last_k: sample.k; random_k / x0_shortcut: the
# largest it drew, k_max; direct: none), half the chain (T // 2, at least 1), the whole chain
FINETUNED_STEP_NAMES = ("k_train", "half", "all")


@dataclass(frozen=True, order=True)
class DialSetting:
    """One point of the dials."""

    alpha: float  # a in [0, 1]: 0 = the original encoder, 1 = the fine-tuned one
    finetuned_steps: int  # M in [1, T]: the last M sampling steps use E(a), the rest E_orig

    def as_dict(self) -> dict[str, float | int]:
        return {"alpha": self.alpha, "finetuned_steps": self.finetuned_steps}


def trained_k(sample: SampleConfig) -> int | None:
    """The K a run's training back-propagated through: ``sample.k`` (last_k), ``sample.k_max``
    (random_k, x0_shortcut: the largest it drew); None for direct (no chain)."""
    if sample.truncation == "last_k":
        return sample.k
    if sample.truncation in ("random_k", "x0_shortcut"):
        return sample.k_max
    return None


def resolve_finetuned_steps(value: int | str, sample: SampleConfig) -> int | None:
    """M for one entry of a dial grid: an int in [1, T], or one of ``FINETUNED_STEP_NAMES``;
    None for ``k_train`` with no trained K (direct). Raises ValueError naming the value and
    what is allowed."""
    t = sample.num_steps
    if isinstance(value, str):
        if value == "k_train":
            return trained_k(sample)
        if value == "half":
            return max(1, t // 2)
        if value == "all":
            return t
        raise ValueError(f"finetuned_steps: {value!r} is neither an int in [1, T] nor one of "
                         f"{FINETUNED_STEP_NAMES}")
    if isinstance(value, bool) or not 1 <= int(value) <= t:
        raise ValueError(f"finetuned_steps: {value!r} lies outside [1, T={t}] "
                         "(T: sample.num_steps)")
    return int(value)


def dial_settings(alphas: Sequence[float], finetuned_steps: Sequence[int | str],
                  sample: SampleConfig) -> list[DialSetting]:
    """The distinct settings of the grid alphas × finetuned_steps, sorted. a = 0 is the base
    model whatever M is: it appears once, as (0, T). Entries that resolve to no M (k_train under
    direct) are left out. Raises ValueError for a outside [0, 1] or M outside [1, T]."""
    for alpha in alphas:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alphas: {alpha} lies outside [0, 1] (0 = the original encoder, "
                             "1 = the fine-tuned one)")
    steps = [m for m in (resolve_finetuned_steps(v, sample) for v in finetuned_steps)
             if m is not None]
    t = sample.num_steps
    settings = {DialSetting(float(a), t if float(a) == 0.0 else m)
                for a in alphas for m in steps}
    return sorted(settings)
