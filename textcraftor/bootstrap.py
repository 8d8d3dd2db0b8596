"""Bootstrap intervals over an evaluation's prompts, with the seeds nested inside them.

An evaluation scores P held-out prompts × S noise seeds. Prompts are the sampled unit (another
study would draw other prompts), and the seeds are a sample within each prompt; so a
replicate draws P prompts with replacement and, for a per-image value, S seeds with
replacement inside each drawn prompt (two-stage resampling; Davison & Hinkley 1997, *Bootstrap
Methods and their Application*, §3.8), then takes the mean. A per-prompt value (a prompt's
diversity across its seeds) resamples prompts only. The interval is the percentile interval
of the replicates (Efron & Tibshirani 1993, §13.3).

A **paired** comparison (a trial against the baseline, scored on the same prompts and seeds)
resamples the per-(prompt, seed) differences, so what the two runs share cancels.

Written here (numpy only, no torch: the driver and the analysis use it): ``scipy.stats.
bootstrap`` resamples one level only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # the intervals' coverage
RESAMPLES = 2000  # replicates per interval
SEED = 0  # the resampling's random seed: an interval is the same every time it is computed


@dataclass(frozen=True)
class Interval:
    """A mean and its percentile bootstrap interval, in the values' units."""

    mean: float  # the mean of the values (not of the replicates)
    low: float  # lower end of the interval
    high: float  # upper end
    num_prompts: int  # P: prompts the values cover
    num_seeds: int  # S: seeds per prompt (1 for per-prompt values)

    def verdict(self, direction: str = "max") -> str:
        """For a paired difference (run − reference): ``better`` when the whole interval is on
        the improving side of 0 (``direction`` "max": above, "min": below), ``worse`` when it is
        on the other side, else ``indistinguishable``."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return "unknown"
        above, below = self.low > 0, self.high < 0
        if direction == "min":
            above, below = below, above
        return "better" if above else "worse" if below else "indistinguishable"


def nested_interval(values: Sequence | np.ndarray, level: float = LEVEL,
                    resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The mean of ``values`` and its two-stage bootstrap interval.

    values: [P, S] (per image: prompts × seeds, prompt-major) or [P] (per prompt); NaN entries
    (e.g. the oracle's accuracy for a prompt that names no attribute) are left out of every
    mean. level: the interval's coverage in (0, 1). Raises ValueError for a shape other than
    [P] or [P, S], or for a level outside (0, 1); P = 0 or no finite value gives NaN ends."""
    array = _as_prompts_by_seeds(values)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    prompts, seeds = array.shape
    finite = np.isfinite(array)
    if not finite.any():
        return Interval(math.nan, math.nan, math.nan, prompts, seeds)
    mean = float(array[finite].mean())
    rng = np.random.default_rng(seed)
    drawn_prompts = rng.integers(prompts, size=(resamples, prompts, 1))
    drawn_seeds = (rng.integers(seeds, size=(resamples, prompts, seeds)) if seeds > 1
                   else np.zeros((resamples, prompts, 1), dtype=int))
    replicates = array[drawn_prompts, drawn_seeds]  # [R, P, S]
    with warnings.catch_warnings():  # a replicate of NaN entries only: "mean of empty slice"
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(replicates.reshape(resamples, -1), axis=1)
    means = means[np.isfinite(means)]  # a replicate that drew only NaN entries
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(mean, float(low), float(high), prompts, seeds)


def paired_difference(run: Sequence | np.ndarray, reference: Sequence | np.ndarray,
                      level: float = LEVEL, resamples: int = RESAMPLES,
                      seed: int = SEED) -> Interval:
    """Mean of run − reference and its two-stage bootstrap interval, both scored on the same
    prompts and seeds (same shape, [P] or [P, S], in the same order). Raises ValueError when
    the shapes differ."""
    a, b = _as_prompts_by_seeds(run), _as_prompts_by_seeds(reference)
    if a.shape != b.shape:
        raise ValueError(f"a paired comparison needs the same prompts and seeds: shapes "
                         f"{a.shape} and {b.shape}")
    return nested_interval(a - b, level, resamples, seed)


def difference_of_groups(first: Sequence | np.ndarray, second: Sequence | np.ndarray,
                         level: float = LEVEL, resamples: int = RESAMPLES,
                         seed: int = SEED) -> Interval:
    """Two groups of repeats scored on the same prompts — e.g. two gradient estimators, each
    trained with its own seeds: the mean over prompts of (first's repeat mean − second's), and
    its bootstrap interval. A replicate draws P prompts with replacement, the same for both
    groups (each prompt is scored by both, so what a prompt does to both cancels), then inside
    each drawn prompt each group's repeats with replacement, independently (they are different
    training runs). first: [P, R1], second: [P, R2] (or [P]: one repeat); NaN entries are left
    out of every mean. Raises ValueError when the prompts differ in number, for a shape other
    than [P] or [P, R], or a level outside (0, 1). num_seeds is min(R1, R2)."""
    a, b = _as_prompts_by_seeds(first), _as_prompts_by_seeds(second)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"two groups on the same prompts need the same number of prompts: "
                         f"{a.shape[0]} and {b.shape[0]}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    prompts = a.shape[0]

    def row_means(array: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # a prompt with NaN entries only: "mean of empty slice"
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(array, axis=-1)

    differences = row_means(a) - row_means(b)  # [P]
    if not np.isfinite(differences).any():
        return Interval(math.nan, math.nan, math.nan, prompts, min(a.shape[1], b.shape[1]))
    mean = float(np.nanmean(differences))
    rng = np.random.default_rng(seed)
    drawn = rng.integers(prompts, size=(resamples, prompts, 1))
    replicates = []
    for array in (a, b):
        repeats = array.shape[1]
        within = (rng.integers(repeats, size=(resamples, prompts, repeats)) if repeats > 1
                  else np.zeros((resamples, prompts, 1), dtype=int))
        replicates.append(row_means(array[drawn, within]))  # [resamples, P]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(replicates[0] - replicates[1], axis=1)
    means = means[np.isfinite(means)]
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(mean, float(low), float(high), prompts, min(a.shape[1], b.shape[1]))


def _as_prompts_by_seeds(values: Sequence | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"values must be [prompts] or [prompts, seeds], got shape "
                         f"{array.shape}")
    return array
