"""Write the synthetic dataset (train/val/test chat-record JSONL) for training and evaluation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from scenarios.records import to_record, write_jsonl
from scenarios.splits import GENERATOR_VERSION, SplitSizes, generate_splits

PROVENANCE = "dataset.json"  # how the splits beside it were generated; absent for data from elsewhere


def write_dataset(out_dir: Path, sizes: SplitSizes = SplitSizes(), seed: int = 0) -> dict[str, Path]:
    """Generate the splits and write `train.jsonl`, `val.jsonl`, `test.jsonl` and `dataset.json` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, cases in generate_splits(sizes, seed).items():
        paths[split] = out_dir / f"{split}.jsonl"
        write_jsonl(paths[split], (to_record(c) for c in cases))
    provenance = {"generator_version": GENERATOR_VERSION, "seed": seed, "sizes": asdict(sizes)}
    (out_dir / PROVENANCE).write_text(json.dumps(provenance) + "\n")
    return paths


def dataset_provenance(data_dir: Path) -> dict | None:
    """What `write_dataset` recorded about the splits in `data_dir`, or None for data written elsewhere."""
    path = Path(data_dir) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else None


def dataset_hash(data_dir: Path) -> str:
    """sha256 over the three split files, so a manifest names exactly the data an adapter saw."""
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        path = Path(data_dir) / f"{split}.jsonl"
        if path.exists():
            digest.update(split.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
