"""Writing a plain model folder (safetensors, tokenizer, a JSON record of how it was made): whole or
not at all, and never over an existing folder. `sunrise export` and `sunrise prepare-base` write these."""

from __future__ import annotations

import json
from pathlib import Path

from harness.atomic import staged_folder
from harness.environment import versions
from harness.errors import HarnessError
from harness.hashing import sha256_file


def refuse_existing(out: str | Path, command: str) -> Path:
    out = Path(out)
    if out.exists():
        raise HarnessError(f"{out} already exists; {command} writes a new folder and never overwrites one")
    return out


def write_record(folder: Path, record_name: str, record: dict) -> dict:
    """`record` plus the library versions, as `record_name` in `folder`; returns what was written."""
    record = {**record, "versions": versions()}
    (folder / record_name).write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_model_folder(out: Path, model, tokenizer, record_name: str, record: dict) -> dict:
    """Save `model` and `tokenizer` into `out` with `record` (plus the weights' hashes and the library
    versions) as `record_name`; returns the full record."""
    with staged_folder(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        return write_record(tmp, record_name, {
            **record, "weights_sha256": {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))}})
