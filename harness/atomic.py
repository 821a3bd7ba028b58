"""Writes that land whole or not at all: a reader (a browser on the report, a resumed run, another
process sharing the generation cache) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _beside(path: Path) -> Path:
    # Same folder, so the final rename stays on one filesystem; a unique name, so concurrent writers
    # (processes sharing a cache, ranks of one training run) never share a temporary file.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


@contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block ends and is
    removed if the block fails. For writers that take a file name (safetensors, streamed JSONL)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """`data` (text as UTF-8, or bytes) as the whole of `path`."""
    with staged_file(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A folder beside `out` to write into, renamed to `out` when the block ends and removed if it fails."""
    tmp = _beside(out)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
