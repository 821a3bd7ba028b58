"""Content hashes that identify models and adapters, memoised so large weights are hashed once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness.atomic import write_atomic

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def memo_sha256(path: Path, memo_dir: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a 6 GB checkpoint is read once."""
    path = Path(path).resolve()
    st = path.stat()
    key = sha256_text(f"{path}\0{st.st_size}\0{st.st_mtime_ns}")
    memo = Path(memo_dir) / "hashes" / f"{key}.json"
    try:
        return json.loads(memo.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = sha256_file(path)
    write_atomic(memo, json.dumps({"path": str(path), "sha256": value}))
    return value


def folder_weights_sha256(folder: Path, memo_dir: Path) -> str:
    """One hash over every weight file in a model folder (names and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    for p in files:
        digest.update(p.name.encode() + b"\0" + memo_sha256(p, memo_dir).encode())
    return digest.hexdigest()
