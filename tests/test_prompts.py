from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from textcraftor.prompts import (
    Prompt,
    PromptSampler,
    PromptSplit,
    load_prompts,
    split_prompts,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARTI_PROMPTS_TSV = SHARED / "data" / "PartiPrompts.tsv"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(f"prompt number {i}") for i in range(n)]


# --- bundled set -----------------------------------------------------------------------------


def test_bundled_set_is_large_unique_and_short() -> None:
    prompts = load_prompts()
    texts = [p.text for p in prompts]
    assert len(texts) >= 300
    assert len(set(texts)) == len(texts), "bundled prompts contain duplicates"
    assert all(t and t == t.strip() for t in texts)
    assert all(p.category is None for p in prompts)
    # ~60 words keeps every prompt inside CLIP's 77-token context.
    assert max(len(t.split()) for t in texts) <= 60


def test_bundled_file_has_no_blank_or_comment_lines() -> None:
    raw = (Path(__file__).parents[1] / "textcraftor" / "data" / "prompts.txt").read_text("utf-8")
    lines = raw.rstrip("\n").split("\n")
    assert all(line.strip() and not line.startswith("#") for line in lines)
    assert len(lines) == len(load_prompts())


def test_bundled_set_covers_the_intended_kinds_of_prompt() -> None:
    texts = [p.text.lower() for p in load_prompts()]

    def count(pattern: str) -> int:
        return sum(bool(re.search(pattern, t)) for t in texts)

    assert count(r"\banime\b") >= 10
    assert count(r"concept art|matte painting") >= 5
    assert count(r"\b(oil|watercolor|impressionist|ink wash|gouache)\b") >= 15
    assert count(r"\bphoto") >= 10
    assert count(r"\"[^\"]+\"") >= 15  # text rendering
    assert count(r"\b(two|three|four|five|six|seven|eight|nine|ten)\b") >= 15  # counting
    assert count(r"\b(left|right|on top of|under|behind|in front of|next to)\b") >= 10
    assert sum(len(t.split()) <= 3 for t in texts) >= 10  # short prompts
    assert sum(len(t.split()) >= 30 for t in texts) >= 10  # long, detailed prompts


# --- txt / csv / tsv loading -----------------------------------------------------------------


def test_txt_strips_skips_comments_and_blank_lines_and_keeps_duplicates(tmp_path: Path) -> None:
    text = "# header comment\n  a cat  \n\n\t\na dog\n  # indented\na cat\n"
    path = _write(tmp_path / "p.txt", text)
    assert load_prompts(path) == [Prompt("a cat"), Prompt("a dog"), Prompt("a cat")]


def test_txt_accepts_str_path_and_uppercase_extension(tmp_path: Path) -> None:
    path = _write(tmp_path / "P.TXT", "one\ntwo")
    assert [p.text for p in load_prompts(str(path))] == ["one", "two"]


def test_csv_quoted_commas_quotes_and_newlines(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p.csv",
        "id,prompt\n"
        '1,"a red, shiny apple"\n'
        '2,"a sign that says ""OPEN"""\n'
        '3,"two lines\nof text"\n'
        "4,   \n"
        "5,plain\n",
    )
    assert [p.text for p in load_prompts(path)] == [
        "a red, shiny apple",
        'a sign that says "OPEN"',
        "two lines\nof text",
        "plain",
    ]


def test_csv_default_column_prefers_Prompt_then_prompt_then_text(tmp_path: Path) -> None:
    both = _write(tmp_path / "both.csv", "text,prompt,Prompt\nt,p,P\n")
    assert load_prompts(both) == [Prompt("P")]
    lower = _write(tmp_path / "lower.csv", "text,prompt\nt,p\n")
    assert load_prompts(lower) == [Prompt("p")]
    text_only = _write(tmp_path / "text.csv", "text,score\nt,1\n")
    assert load_prompts(text_only) == [Prompt("t")]


def test_csv_explicit_column_and_category_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "caption,prompt,kind\nA caption,a prompt,photo\nB,b,\n")
    assert load_prompts(path, column="caption", category_column="kind") == [
        Prompt("A caption", "photo"),
        Prompt("B", None),  # an empty category cell means no category
    ]


def test_csv_with_byte_order_mark_finds_first_column(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_text("Prompt,Category\nx,Animals\n", encoding="utf-8-sig")
    assert load_prompts(path) == [Prompt("x", "Animals")]


def test_tsv_quoted_fields_with_tabs(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.tsv", 'prompt\tnote\n"a\ttabbed, quoted prompt"\tn\nplain\tm\n')
    assert [p.text for p in load_prompts(path)] == ["a\ttabbed, quoted prompt", "plain"]


def test_tsv_shaped_like_parti_prompts_gives_categories(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "parti_sample.tsv",
        "Prompt\tCategory\tChallenge\tNote\n"
        "bond\tAbstract\tBasic\tBiology-inspired concepts with multiple meanings\n"
        "A red cube on top of a blue cube.\tArtifacts\tPerspective\t\n"
        '"G I G G L E" painted as graffiti on a brick wall\tIllustrations\tWriting & Symbols\t\n'
        'Dogs playing poker\tAnimals\tImagination\tDescription of "Dogs Playing Poker"\n',
    )
    assert load_prompts(path) == [
        Prompt("bond", "Abstract"),
        Prompt("A red cube on top of a blue cube.", "Artifacts"),
        # a raw TSV's leading quote is text, not CSV quoting: it must survive unchanged
        Prompt('"G I G G L E" painted as graffiti on a brick wall', "Illustrations"),
        Prompt("Dogs playing poker", "Animals"),
    ]
    assert [p.category for p in load_prompts(path, category_column="Challenge")] == [
        "Basic",
        "Perspective",
        "Writing & Symbols",
        "Imagination",
    ]


def test_real_parti_prompts_file() -> None:
    prompts = load_prompts(PARTI_PROMPTS_TSV)
    assert len(prompts) == 1632
    assert prompts[0] == Prompt("bond", "Abstract")
    reference = pd.read_csv(PARTI_PROMPTS_TSV, sep="\t", quoting=3, keep_default_na=False)
    assert [p.text for p in prompts] == reference["Prompt"].str.strip().tolist()
    assert [p.category for p in prompts] == reference["Category"].tolist()
    categories = {p.category for p in prompts}
    assert len(categories) == 12 and "World Knowledge" in categories
    assert any(p.text.startswith('"G I G G L E"') for p in prompts)


# --- errors ----------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_prompts(missing)


def test_unknown_extension_lists_allowed_ones(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", '["a"]')
    with pytest.raises(ValueError, match=r"\.json") as info:
        load_prompts(path)
    assert all(ext in str(info.value) for ext in (".txt", ".csv", ".tsv"))


def test_unknown_column_names_file_and_available_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "prompt,score\na,1\n")
    with pytest.raises(ValueError, match="caption") as info:
        load_prompts(path, column="caption")
    message = str(info.value)
    assert str(path) in message and "prompt" in message and "score" in message


def test_unknown_category_column_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "prompt,score\na,1\n")
    with pytest.raises(ValueError, match=r"unknown category column 'kind'.*prompt, score"):
        load_prompts(path, category_column="kind")


def test_no_default_column_lists_available_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.tsv", "caption\tscore\na\t1\n")
    with pytest.raises(ValueError, match=r"no prompt column.*caption, score") as info:
        load_prompts(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.txt", ""),
        ("comments.txt", "# only a comment\n\n   \n"),
        ("header_only.csv", "prompt,score\n"),
        ("blank_rows.csv", "prompt,score\n ,1\n,2\n"),
        ("nothing.tsv", ""),
    ],
)
def test_file_without_prompts_is_reported_empty(tmp_path: Path, name: str, content: str) -> None:
    path = _write(tmp_path / name, content)
    with pytest.raises(ValueError, match="empty") as info:
        load_prompts(path)
    assert str(path) in str(info.value)


def test_column_arguments_are_rejected_for_txt(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.txt", "a\n")
    with pytest.raises(ValueError, match=r"\.csv/\.tsv"):
        load_prompts(path, column="prompt")
    with pytest.raises(ValueError, match=r"\.csv/\.tsv"):
        load_prompts(category_column="Category")


def test_malformed_csv_quoting_is_an_error_not_silent_mangling(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", 'prompt\n"OPEN" sign on a door\n')
    with pytest.raises(ValueError, match="malformed CSV"):
        load_prompts(path)


# --- held-out split --------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete() -> None:
    prompts = _prompts(100)
    split = split_prompts(prompts, heldout_fraction=0.1, seed=3)
    assert isinstance(split, PromptSplit)
    assert split == split_prompts(list(prompts), heldout_fraction=0.1, seed=3)
    assert len(split.heldout) == 10 and len(split.train) == 90
    assert not {p.text for p in split.train} & {p.text for p in split.heldout}
    assert sorted(split.train + split.heldout, key=prompts.index) == prompts
    # each side keeps file order
    assert list(split.heldout) == sorted(split.heldout, key=prompts.index)


def test_split_depends_on_seed_and_is_stable_for_the_bundled_file() -> None:
    first = split_prompts(load_prompts(), seed=0)
    assert first == split_prompts(load_prompts(), seed=0)
    assert first.heldout != split_prompts(load_prompts(), seed=1).heldout
    assert 0 < len(first.heldout) < len(first.train)


def test_split_heldout_count_overrides_fraction() -> None:
    split = split_prompts(_prompts(20), heldout_fraction=0.5, heldout_count=3)
    assert len(split.heldout) == 3 and len(split.train) == 17


def test_split_small_fraction_still_holds_out_one() -> None:
    split = split_prompts(_prompts(3), heldout_fraction=0.01)
    assert len(split.heldout) == 1 and len(split.train) == 2


def test_split_keeps_duplicates_on_one_side() -> None:
    prompts = [Prompt("a"), Prompt("b"), Prompt("a"), Prompt("c"), Prompt("a", "Animals")]
    for seed in range(10):
        split = split_prompts(prompts, heldout_count=1, seed=seed)
        assert not {p.text for p in split.train} & {p.text for p in split.heldout}
        assert len(split.train) + len(split.heldout) == len(prompts)


@pytest.mark.parametrize(
    ("prompts", "kwargs", "message"),
    [
        ([], {}, "at least 2 distinct prompts"),
        ([Prompt("a")], {}, "at least 2 distinct prompts"),
        ([Prompt("a"), Prompt("a")], {}, "at least 2 distinct prompts"),
        (_prompts(10), {"heldout_fraction": 0.0}, r"heldout_fraction must be in \(0, 1\)"),
        (_prompts(10), {"heldout_fraction": 1.0}, r"heldout_fraction must be in \(0, 1\)"),
        (_prompts(2), {"heldout_fraction": 0.9}, "leaves no training prompts"),
        (_prompts(10), {"heldout_count": 0}, r"heldout_count must be in \[1, 9\]"),
        (_prompts(10), {"heldout_count": 10}, r"heldout_count must be in \[1, 9\]"),
    ],
)
def test_split_rejects_bad_arguments(prompts: list[Prompt], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_prompts(prompts, **kwargs)


# --- sampler ---------------------------------------------------------------------------------


def test_sampler_batch_is_a_pure_function_of_seed_step_rank() -> None:
    prompts = _prompts(50)
    sampler = PromptSampler(prompts, batch_size=4, seed=7, rank=1, world_size=2)
    seen = [sampler.batch(step) for step in range(30)]
    resumed = PromptSampler(prompts, batch_size=4, seed=7, rank=1, world_size=2)
    # a resumed run asks for late steps first: same batches regardless of call order
    assert [resumed.batch(step) for step in reversed(range(30))] == seen[::-1]
    assert all(len(batch) == 4 for batch in seen)
    other_seed = PromptSampler(prompts, batch_size=4, seed=8, rank=1, world_size=2)
    assert [other_seed.batch(s) for s in range(30)] != seen


def test_sampler_ranks_are_disjoint_within_a_step() -> None:
    prompts = _prompts(37)
    samplers = [PromptSampler(prompts, 3, seed=0, rank=r, world_size=4) for r in range(4)]
    for step in range(40):
        batches = [s.batch(step) for s in samplers]
        texts = [p.text for batch in batches for p in batch]
        assert len(set(texts)) == len(texts) == 12, f"ranks overlap at step {step}"


def test_sampler_covers_every_prompt_once_per_epoch() -> None:
    prompts = _prompts(24)
    samplers = [PromptSampler(prompts, 2, seed=5, rank=r, world_size=3) for r in range(3)]
    for epoch in range(3):
        steps = range(epoch * 4, (epoch + 1) * 4)  # 24 prompts / (2 * 3) per step
        texts = [p.text for step in steps for s in samplers for p in s.batch(step)]
        assert sorted(texts) == sorted(p.text for p in prompts)
    first_epoch = [p.text for step in range(4) for p in samplers[0].batch(step)]
    second_epoch = [p.text for step in range(4, 8) for p in samplers[0].batch(step)]
    assert first_epoch != second_epoch  # a fresh permutation each epoch


def test_sampler_epoch_covers_all_prompts_when_global_batch_does_not_divide() -> None:
    prompts = _prompts(10)
    samplers = [PromptSampler(prompts, batch_size=2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert samplers[0].steps_per_epoch == 3  # ceil(10 / 4); the last step wraps around
    for epoch in range(3):
        steps = range(epoch * 3, (epoch + 1) * 3)
        texts = [p.text for step in steps for s in samplers for p in s.batch(step)]
        assert len(texts) == 12
        assert set(texts) == {p.text for p in prompts}


def test_sampler_wraps_around_with_fewer_prompts_than_a_batch() -> None:
    prompts = _prompts(3)
    batch = PromptSampler(prompts, batch_size=7, seed=0).batch(0)
    assert len(batch) == 7
    assert set(batch) == set(prompts)


def test_sampler_single_rank_order_is_a_permutation_not_the_file_order() -> None:
    prompts = _prompts(200)
    batch = PromptSampler(prompts, batch_size=200, seed=0).batch(0)
    assert sorted(batch, key=prompts.index) == prompts
    assert batch != prompts


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": []}, "at least one prompt"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"world_size": 0}, "world_size must be >= 1"),
        ({"rank": 2, "world_size": 2}, r"rank must be in \[0, 1\]"),
        ({"rank": -1}, r"rank must be in \[0, 0\]"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"prompts": _prompts(5), "batch_size": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        PromptSampler(**arguments)


def test_sampler_rejects_negative_step() -> None:
    with pytest.raises(ValueError, match="step must be >= 0"):
        PromptSampler(_prompts(5), 2, seed=0).batch(-1)
