"""The real CLIP BPE tokenizer, built offline from the vocabulary file open_clip ships.

OpenAI's CLIP, SD v1.5's tokenizer and the LAION CLIP-H tokenizer share one BPE vocabulary
(49,408 ids; 49406 = start, 49407 = end, padding with the end token as SD does). open_clip
bundles that vocabulary as ``bpe_simple_vocab_16e6.txt.gz``; writing it out as ``vocab.json`` +
``merges.txt`` gives a transformers ``CLIPTokenizer`` with the same ids as the hub's.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

from textcraftor.atomic import write_text_atomic

CLIP_VOCAB_SIZE = 49408
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
# open_clip keeps the first 49152 - 256 - 2 merges of its file: that gives exactly 49,408 ids.
_NUM_MERGES = 49152 - 256 - 2


def _bpe_merges() -> list[str]:
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    return lines[1 : _NUM_MERGES + 1]


def write_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of the CLIP BPE into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = _bpe_merges()
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [START_TOKEN, END_TOKEN]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    write_text_atomic(folder / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}))
    write_text_atomic(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def build_clip_tokenizer(folder: str | Path, max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` written to ``folder`` in SD's on-disk layout and loaded back."""
    folder = write_clip_tokenizer_files(folder)
    # SD v1.5's tokenizer folder holds just these two files plus this config.
    config = {"model_max_length": max_length, "pad_token": END_TOKEN, "do_lower_case": True}
    write_text_atomic(folder / "tokenizer_config.json", json.dumps(config))
    return CLIPTokenizer.from_pretrained(str(folder))


