"""A disk cache of generations, keyed on everything that decides an output.

The key covers the model's identity (name, weights hash, adapter hash, quantisation, dtype, numerics,
the NF4 kernel, the decoder and its loop rule), the prompt and the generation settings, so a rerun of
an unchanged suite generates nothing and a new adapter regenerates only its own outputs. Entries are
written atomically; an entry that does not read back whole and matching its key is treated as a miss
and overwritten, never trusted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.atomic import write_atomic
from harness.hashing import sha256_text


def cache_key(identity: Mapping[str, Any], note: str, settings: Mapping[str, Any], prompt_version: str) -> str:
    material = {"identity": dict(identity), "note": note, "settings": dict(settings), "prompt": prompt_version}
    return sha256_text(json.dumps(material, sort_keys=True, ensure_ascii=False))


class GenerationCache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.hits = self.misses = self.corrupt = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry["key"] != key or not isinstance(entry["text"], str):
                raise ValueError("entry does not match its key")
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.corrupt += 1
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: str, entry: dict) -> None:
        path = self._path(key)
        write_atomic(path, json.dumps({**entry, "key": key}, ensure_ascii=False))
