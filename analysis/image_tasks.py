"""Open question 2 on other tasks (issue 23, item 5): does the tuned text encoder help
image-to-image and inpainting? Read from the JSON tables ``python -m textcraftor.image_tasks
--out DIR`` wrote (``DIR/recolour.json``, ``DIR/inpaint.json``); no model runs here.

Every number keeps its N (items × seeds) and its 95 % interval: the gain is the paired
difference tuned − base over the same items and noise seeds, as the command computed it
(``textcraftor.bootstrap``, items resampled and seeds inside them).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

TASK_FILES = ("recolour.json", "inpaint.json")  # what the command writes, one per task
# The scores the reading speaks of, per task; the tables hold every score.
HEADLINE = {
    "recolour": ("colour", "shape", "all"),
    "inpaint": ("added_all", "added_shape", "added_colour", "kept_all", "outside_change"),
}
MEANING = {  # what each headline score measures, for the reading
    "colour": "the shape has the asked colour",
    "shape": "the shape's kind is kept",
    "all": "the asked colour and everything else kept",
    "added_all": "the new shape is right in every attribute",
    "added_shape": "the new shape's kind",
    "added_colour": "the new shape's colour",
    "kept_all": "the old shape still read exactly",
    "outside_change": "mean absolute pixel change outside the mask; lower is better",
}


def load_tables(out: str | Path) -> pd.DataFrame:
    """One row per (task, strength, score): every field of the command's rows (base, tuned
    and gain with ``*_ci_low``/``*_ci_high``, verdict, direction, num_items, num_seeds) plus
    task, strength, denoising_steps and wall_s. Raises FileNotFoundError naming the command
    when ``out`` holds no task table."""
    found = [Path(out) / name for name in TASK_FILES if (Path(out) / name).is_file()]
    if not found:
        raise FileNotFoundError(f"{out}: no {' or '.join(TASK_FILES)}; run `python -m "
                                f"textcraftor.image_tasks --text-encoder-from RUN --out {out}` "
                                "first")
    rows = []
    for path in found:
        data = json.loads(path.read_text())
        for setting in data["settings"]:
            for row in setting["rows"]:
                rows.append({"task": data["task"], "strength": setting["strength"],
                             "denoising_steps": setting["denoising_steps"],
                             "wall_s": setting["wall_s"], **row})
    return pd.DataFrame(rows)


def load_meta(out: str | Path) -> dict[str, dict]:
    """Per task: the run it compared (``text_encoder_from``, ``checkpoint``), the settings
    (``config``) and each setting's ``reference`` (inpaint: the VAE round trip's change outside
    the mask), without the per-image values."""
    meta = {}
    for name in TASK_FILES:
        path = Path(out) / name
        if path.is_file():
            data = json.loads(path.read_text())
            meta[data["task"]] = {
                **{k: v for k, v in data.items() if k not in ("settings", "prompts")},
                "references": {s["strength"]: s.get("reference", {}) for s in data["settings"]},
                "grids": {s["strength"]: s["grid"] for s in data["settings"]}}
    return meta


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The headline scores (HEADLINE) of every task and setting, in that order."""
    parts = []
    for task, scores in HEADLINE.items():
        rows = table[(table["task"] == task) & table["score"].isin(scores)].copy()
        rows["order"] = rows["score"].map({s: i for i, s in enumerate(scores)})
        parts.append(rows.sort_values(["strength", "order"]).drop(columns="order"))
    return pd.concat(parts, ignore_index=True)


def gain_figure(table: pd.DataFrame) -> Figure:
    """The paired gain (tuned − base) of each headline score with its 95 % interval, one panel
    per task, one row per (strength, score); lower-is-better scores are flipped so that right
    of 0 always means the tuned encoder is better."""
    rows = headline(table)
    tasks = list(dict.fromkeys(rows["task"]))
    heights = [max(2.0, 0.32 * (rows["task"] == t).sum()) for t in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(7, sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    colours = {"better": "C2", "worse": "C3", "indistinguishable": "0.4"}
    for ax, task in zip(axes[:, 0], tasks):
        part = rows[rows["task"] == task].reset_index(drop=True)
        sign = part["direction"].map({"max": 1.0, "min": -1.0})
        gain, low, high = (part[c] * sign for c in ("gain", "gain_ci_low", "gain_ci_high"))
        low, high = pd.concat([low, high], axis=1).min(axis=1), pd.concat(
            [low, high], axis=1).max(axis=1)
        y = range(len(part))[::-1]
        for yi, g, lo, hi, verdict in zip(y, gain, low, high, part["verdict"]):
            ax.errorbar(g, yi, xerr=[[g - lo], [hi - g]], fmt="o", capsize=3,
                        color=colours.get(verdict, "0.4"))
        ax.axvline(0, color="0.7", lw=1)
        labels = [f"s={s:g} {n}{' (−)' if d == 'min' else ''}" for s, n, d in
                  zip(part["strength"], part["score"], part["direction"])]
        ax.set_yticks(list(y), labels)
        n = f"{int(part['num_items'].iloc[0])} items × {int(part['num_seeds'].iloc[0])} seeds"
        ax.set_title(f"{task}: tuned − base, 95 % interval ({n})", fontsize=10)
    axes[-1, 0].set_xlabel("gain (right of 0: the tuned encoder is better)")
    fig.tight_layout()
    return fig


def _fmt(row: pd.Series, key: str) -> str:
    return f"{row[key]:.3f} [{row[key + '_ci_low']:.3f}, {row[key + '_ci_high']:.3f}]"


def _gain(row: pd.Series) -> str:
    return (f"{row['gain']:+.3f} [{row['gain_ci_low']:+.3f}, {row['gain_ci_high']:+.3f}] "
            f"({row['verdict']})")


def reading(table: pd.DataFrame, meta: dict[str, dict] | None = None) -> str:
    """A Markdown reading computed from the tables: per task and setting each headline score
    for base and tuned with its interval and the paired gain with its verdict; then which
    settings the tuned encoder measurably helps or hurts."""
    rows = headline(table)
    lines = []
    for task in dict.fromkeys(rows["task"]):
        part = rows[rows["task"] == task]
        first = part.iloc[0]
        lines.append(f"**{task}** ({int(first['num_items'])} items × "
                     f"{int(first['num_seeds'])} seeds, paired 95 % intervals):")
        for strength, setting in part.groupby("strength", sort=True):
            steps = int(setting["denoising_steps"].iloc[0])
            lines.append(f"- strength {strength:g} ({steps} DDIM steps):")
            for _, row in setting.iterrows():
                lines.append(f"  - {row['score']} ({MEANING.get(row['score'], '')}): base "
                             f"{_fmt(row, 'base')}, tuned {_fmt(row, 'tuned')}, gain "
                             f"{_gain(row)}")
        reference = ((meta or {}).get(task) or {}).get("references", {})
        for strength, ref in reference.items():
            if "vae_round_trip_outside_change" in ref:
                lines.append(f"- the VAE round trip alone changes the pixels outside the mask "
                             f"by {ref['vae_round_trip_outside_change']:.3f} (strength "
                             f"{strength:g}): the 4-channel path keeps the input's latents "
                             "there, and the decoder's reach adds the rest")
    verdicts = rows.groupby("verdict").size().to_dict()
    better = rows[rows["verdict"] == "better"]
    worse = rows[rows["verdict"] == "worse"]

    def where(frame: pd.DataFrame) -> str:
        return "; ".join(f"{r.task} s={r.strength:g} {r.score} ({r.gain:+.3f})"
                         for r in frame.itertuples()) or "none"

    lines.append("")
    lines.append(f"Of {len(rows)} headline comparisons, {verdicts.get('better', 0)} are better "
                 f"with the tuned encoder, {verdicts.get('worse', 0)} worse and "
                 f"{verdicts.get('indistinguishable', 0)} indistinguishable (interval across "
                 f"0). Better: {where(better)}. Worse: {where(worse)}.")
    if len(worse) and not len(better):
        lines.append("The tuned encoder transfers no measurable gain to these tasks and costs "
                     "accuracy where the intervals separate.")
    elif len(better) and not len(worse):
        lines.append("The tuned encoder's gain carries over to these tasks where the intervals "
                     "separate, with no measurable loss.")
    elif not len(better) and not len(worse):
        lines.append("No measurable difference at this N: the intervals hold 0 everywhere.")
    else:
        lines.append("The tuned encoder helps some settings and hurts others.")
    lines.append("No correction for the number of comparisons; each verdict is one paired "
                 "95 % interval.")
    return "\n".join(lines)
