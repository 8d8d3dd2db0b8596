"""Prompt sets: loading, a stable held-out split, and a resumable rank-aware batch sampler.

TextCraftor trains on prompts only, so a prompt file is the whole training set.
"""

from __future__ import annotations

import csv
import io
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from textcraftor.shapes_weights import is_shapes_preset

if TYPE_CHECKING:
    from textcraftor.config import DataConfig

log = logging.getLogger(__name__)
PROMPT_COLUMN_CANDIDATES = ("Prompt", "prompt", "text")
DEFAULT_CATEGORY_COLUMN = "Category"
ALLOWED_EXTENSIONS = (".txt", ".csv", ".tsv")
BUNDLED_PROMPTS_NAME = "bundled prompts (textcraftor/data/prompts.txt)"
SHAPES_PROMPTS = "shapes"  # data.prompts value: ShapesWorld captions, generated
SHAPES_PROMPT_COUNT = 256


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str | None = None  # e.g. Parti-Prompts' `Category`; used to break results down


@dataclass(frozen=True)
class PromptSplit:
    train: tuple[Prompt, ...]
    heldout: tuple[Prompt, ...]


def load_prompts(
    path: str | Path | None = None,
    column: str | None = None,
    category_column: str | None = None,
) -> list[Prompt]:
    """Prompts in file order, whitespace-stripped, empty rows dropped, duplicates kept.

    ``None`` reads the bundled set, ``"shapes"`` generates ShapesWorld captions (category: the
    number of shapes). ``.txt``: one prompt per line, lines starting with ``#``
    skipped. ``.csv``/``.tsv``: ``column`` defaults to the first of ``Prompt``, ``prompt``,
    ``text`` present; ``category_column`` defaults to ``Category`` when present.
    """
    if path is None:
        _reject_column_arguments(column, category_column, BUNDLED_PROMPTS_NAME)
        text = (resources.files("textcraftor") / "data" / "prompts.txt").read_text("utf-8")
        return _require_nonempty(_parse_txt(text), BUNDLED_PROMPTS_NAME)
    if str(path) == SHAPES_PROMPTS:
        _reject_column_arguments(column, category_column, "shapes prompts")
        return shapes_prompts()

    path = Path(path)
    extension = path.suffix.lower()
    if extension not in ALLOWED_EXTENSIONS:
        raise ValueError(
            f"{path}: unsupported prompt file extension {path.suffix!r}; "
            f"allowed: {', '.join(ALLOWED_EXTENSIONS)}"
        )
    if extension == ".txt":
        _reject_column_arguments(column, category_column, str(path))
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    # utf-8-sig: spreadsheet exports often start with a byte-order mark, which would otherwise
    # become part of the first column's name.
    text = path.read_text(encoding="utf-8-sig")
    if extension == ".txt":
        prompts = _parse_txt(text)
    else:
        delimiter = "\t" if extension == ".tsv" else ","
        prompts = _parse_table(text, path, delimiter, column, category_column)
    return _require_nonempty(prompts, str(path))


def shapes_prompts(count: int = SHAPES_PROMPT_COUNT, seed: int = 0) -> list[Prompt]:
    """Distinct ShapesWorld captions from a dataset seed no pretraining stage used."""
    from textcraftor.shapes.world import ShapesDataset

    dataset, prompts, seen, index = ShapesDataset(seed=seed + 7), [], set(), 0
    while len(prompts) < count:
        scene, text = dataset.scene_and_caption(index)
        index += 1
        if text not in seen:
            seen.add(text)
            count_word = "1 shape" if len(scene.shapes) == 1 else f"{len(scene.shapes)} shapes"
            prompts.append(Prompt(text, count_word))
    return prompts


def warn_unscorable(prompts: Sequence[Prompt]) -> int:
    """Log once how many prompts the ShapesWorld oracle cannot (fully) score; their number."""
    from textcraftor.shapes.world import parse_prompt

    unscorable = [(p.text, unknown) for p in prompts
                  for scene, unknown in [parse_prompt(p.text)] if scene is None or unknown]
    if unscorable:
        text, unknown = unscorable[0]
        log.warning(
            "%d of %d prompts have words outside ShapesWorld's vocabulary or name no shape: the "
            "oracle cannot score them (they still train), e.g. %r (%s)", len(unscorable),
            len(prompts), text[:80], ", ".join(unknown) or "no shape named")
    return len(unscorable)


def _reject_column_arguments(column: str | None, category_column: str | None, source: str) -> None:
    if column is not None or category_column is not None:
        raise ValueError(
            f"{source}: column and category_column apply only to .csv/.tsv prompt files"
        )


def _parse_txt(text: str) -> list[Prompt]:
    stripped = (line.strip() for line in text.splitlines())
    return [Prompt(line) for line in stripped if line and not line.startswith("#")]


def _parse_table(
    text: str,
    path: Path,
    delimiter: str,
    column: str | None,
    category_column: str | None,
) -> list[Prompt]:
    rows = _read_rows(text, path, delimiter)
    if not rows:
        raise ValueError(f"{path}: prompt file is empty (no header, no prompts)")
    header = [name.strip() for name in rows[0]]
    prompt_index = _column_index(header, column, path, "prompt")
    if category_column is None and DEFAULT_CATEGORY_COLUMN in header:
        category_column = DEFAULT_CATEGORY_COLUMN
    category_index = (
        None
        if category_column is None
        else _column_index(header, category_column, path, "category")
    )
    prompts = []
    for row in rows[1:]:
        prompt_text = _cell(row, prompt_index)
        if not prompt_text:
            continue
        category = _cell(row, category_index) if category_index is not None else ""
        prompts.append(Prompt(prompt_text, category or None))
    return prompts


def _read_rows(text: str, path: Path, delimiter: str) -> list[list[str]]:
    """Rows of a delimited file; quoted fields (with delimiters, quotes, newlines) supported.

    Raw TSV files such as Parti-Prompts put literal quotes at the start of a field
    (``"G I G G L E" painted ...``), which a quote-aware reader would silently mangle. Strict
    parsing detects that; a TSV is then re-read with quotes as plain text, a CSV is rejected.
    """
    try:
        return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as error:
        if delimiter != "\t":
            raise ValueError(f"{path}: malformed CSV ({error})") from error
    return list(
        csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_NONE)
    )


def _column_index(header: list[str], name: str | None, path: Path, role: str) -> int:
    if name is None:
        name = next((c for c in PROMPT_COLUMN_CANDIDATES if c in header), None)
        if name is None:
            raise ValueError(
                f"{path}: no prompt column found (looked for "
                f"{', '.join(PROMPT_COLUMN_CANDIDATES)}); available columns: {', '.join(header)}"
            )
    if name not in header:
        raise ValueError(
            f"{path}: unknown {role} column {name!r}; available columns: {', '.join(header)}"
        )
    return header.index(name)


def _cell(row: list[str], index: int) -> str:
    return row[index].strip() if index < len(row) else ""


def _require_nonempty(prompts: list[Prompt], source: str) -> list[Prompt]:
    if not prompts:
        raise ValueError(f"{source}: prompt file is empty (no prompts found)")
    return prompts


def run_prompts(data: DataConfig, model_source: str) -> list[Prompt]:
    """A run's prompts: ``data.prompts`` (ShapesWorld's captions by default for the shapes
    preset, else the bundled set); on the shapes preset, warns about prompts its oracle cannot
    score."""
    source = data.prompts or (SHAPES_PROMPTS if is_shapes_preset(model_source) else None)
    prompts = load_prompts(source, column=data.column)
    if is_shapes_preset(model_source):
        warn_unscorable(prompts)
    return prompts


def split_prompts(
    prompts: Sequence[Prompt],
    heldout_fraction: float = 0.1,
    heldout_count: int | None = None,
    seed: int = 0,
) -> PromptSplit:
    """Deterministic train / held-out split; both parts keep file order.

    The split is over distinct prompt texts, so a prompt repeated in the file never lands on
    both sides; ``heldout_count`` (which overrides ``heldout_fraction``) counts distinct texts.
    """
    distinct_texts = list(dict.fromkeys(p.text for p in prompts))
    n = len(distinct_texts)
    if n < 2:
        raise ValueError(f"need at least 2 distinct prompts to split, got {n}")
    if heldout_count is None:
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        heldout_count = max(1, round(n * heldout_fraction))
        if heldout_count >= n:
            raise ValueError(
                f"heldout_fraction={heldout_fraction} of {n} distinct prompts leaves no "
                "training prompts"
            )
    elif not 1 <= heldout_count <= n - 1:
        raise ValueError(
            f"heldout_count must be in [1, {n - 1}] for {n} distinct prompts, got {heldout_count}"
        )
    shuffled = distinct_texts.copy()
    random.Random(seed).shuffle(shuffled)
    heldout_texts = set(shuffled[:heldout_count])
    return PromptSplit(
        train=tuple(p for p in prompts if p.text not in heldout_texts),
        heldout=tuple(p for p in prompts if p.text in heldout_texts),
    )


class PromptSampler:
    """Training batches as a pure function of ``(seed, step, rank)``; resuming needs only the step.

    Each epoch is a fresh permutation of the prompts seeded by ``(seed, epoch)`` and lasts
    ``ceil(len(prompts) / global_batch_size)`` steps; its last step wraps around to the start of
    the same permutation (as torch's ``DistributedSampler`` pads). Step ``s`` of an epoch holds
    permutation entries ``s * G ... s * G + G - 1`` (mod the prompt count), ``G`` the global
    batch, and rank ``r`` takes the ``r``-th slice of ``batch_size`` of them. So every epoch
    covers every prompt, and ranks see disjoint prompts within a step whenever ``G`` is at most
    the prompt count (with fewer prompts, a step repeats some).
    """

    def __init__(
        self,
        prompts: Sequence[Prompt],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not prompts:
            raise ValueError("PromptSampler needs at least one prompt")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size - 1}], got {rank}")
        self.prompts = tuple(prompts)
        self.batch_size = batch_size  # per rank
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._cached_epoch: int | None = None
        self._cached_order: list[int] = []

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.prompts) // self.global_batch_size)

    def batch(self, step: int) -> list[Prompt]:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        start = step_in_epoch * self.global_batch_size + self.rank * self.batch_size
        positions = range(start, start + self.batch_size)
        return [self.prompts[order[position % len(order)]] for position in positions]

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch != self._cached_epoch:
            order = list(range(len(self.prompts)))
            # A string seed is hashed with SHA-512 by `random`, so it is stable across processes
            # and cannot collide the way `seed * K + epoch` can.
            random.Random(f"prompt-sampler:{self.seed}:{epoch}").shuffle(order)
            self._cached_epoch, self._cached_order = epoch, order
        return self._cached_order
