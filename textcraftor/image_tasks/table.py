"""Each score of the base and the tuned encoder with its 95 % interval, and the paired gain
(tuned − base) with its own, over the same items and seeds (``textcraftor.bootstrap``: items
resampled, seeds inside each item; the items are the sampled unit, as prompts are in an
evaluation). numpy only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from textcraftor.bootstrap import Interval, nested_interval, paired_difference


def score_rows(base: Mapping[str, np.ndarray | Sequence], tuned: Mapping[str, np.ndarray |
               Sequence], lower_is_better: frozenset[str] = frozenset()) -> list[dict]:
    """One row per score: ``score``, ``direction`` (max or min), ``base`` and ``tuned`` (means)
    with ``*_ci_low``/``*_ci_high``, ``gain`` (mean of tuned − base per item and seed) with
    ``gain_ci_low``/``gain_ci_high`` and ``verdict`` (better / worse / indistinguishable, in
    the score's direction), ``num_items`` and ``num_seeds`` (the N behind every interval).

    ``base``, ``tuned``: score name → values [items, seeds], item-major, both over the same
    items and seeds in the same order. Raises ValueError when their names or shapes differ."""
    if set(base) != set(tuned):
        raise ValueError(f"base and tuned have other scores: {sorted(base)} vs {sorted(tuned)}")
    rows = []
    for name in base:
        a, b = np.asarray(base[name], dtype=float), np.asarray(tuned[name], dtype=float)
        direction = "min" if name in lower_is_better else "max"
        gain = paired_difference(b, a)
        rows.append({"score": name, "direction": direction,
                     **_interval("base", nested_interval(a)),
                     **_interval("tuned", nested_interval(b)),
                     **_interval("gain", gain), "verdict": gain.verdict(direction),
                     "num_items": gain.num_prompts, "num_seeds": gain.num_seeds})
    return rows


def _interval(name: str, interval: Interval) -> dict[str, float]:
    return {name: interval.mean, f"{name}_ci_low": interval.low,
            f"{name}_ci_high": interval.high}


def by_item(values: Sequence[float], num_items: int, num_seeds: int) -> np.ndarray:
    """Per-image values in item-major order (all seeds of item 0 first) → [items, seeds].
    Raises ValueError when there are not items × seeds of them."""
    array = np.asarray(values, dtype=float)
    if array.size != num_items * num_seeds:
        raise ValueError(f"{array.size} values are not {num_items} items × {num_seeds} seeds")
    return array.reshape(num_items, num_seeds)
