"""Files written atomically: a temporary file in the same folder, then ``os.replace``, so a
reader (or a run interrupted mid-write) sees the old file or the new one, never half of one.
The one home of that pattern for run folders, sweep folders and tokenizer files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8), creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Replace ``path`` with ``data`` as JSON (``default`` as in ``json.dumps``)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=default))


def append_line_atomic(path: str | Path, line: str) -> Path:
    """Add one line to a text file (a JSON-lines log) by rewriting it atomically: a crash
    leaves the file with or without the line, never with part of it."""
    path = Path(path)
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    if before and not before.endswith("\n"):
        before += "\n"
    return write_text_atomic(path, before + line + "\n")
