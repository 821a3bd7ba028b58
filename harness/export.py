"""An adapter in the form other engines load: merged into its base, as one plain model folder.

vLLM, TGI or transformers without peft load the folder as they load any Hugging Face model. The
merge needs unquantised weights, so an adapter trained on NF4 weights (QLoRA) is merged into the
full-precision base: the export says so, because such an adapter can behave differently there
(judge it with `pytest -m tuned --quantization none`, or measure it with benchmarks/numerics.py).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from harness.environment import versions
from harness.errors import HarnessError
from harness.hashing import sha256_file
from harness.models import (
    ModelSpec,
    attach_adapter,
    check_adapter_base,
    inspect_adapter,
    load_base_model,
    resolve_base,
)


def export_merged(adapter: str | Path, out: str | Path, base: str = "embedded", dtype: str = "float32") -> dict:
    """Write `out`: the base with `adapter` merged in (safetensors), its tokenizer, and
    `sunrise_export.json` (what was merged into what, hashes, the adapter's training numerics).
    Returns that record. `out` must not exist yet; it appears whole or not at all."""
    # sdpa, the engines' own attention, rather than the harness's batch-invariant float64 attention,
    # whose name would otherwise be saved into config.json. Built first: it validates the dtype.
    spec = ModelSpec(base=base, quantization="none", dtype=dtype, adapter=str(adapter), merge_adapter=True,
                     attn_implementation="sdpa")
    out = Path(out)
    if out.exists():
        raise HarnessError(f"{out} already exists; export writes a new folder and never overwrites one")
    info = inspect_adapter(adapter)
    resolved = resolve_base(base)
    check_adapter_base(info, resolved)
    trained = _adapter_manifest(info.path)
    trained_on = trained.get("hyperparameters", {}).get("quantization")
    tokenizer, model = load_base_model(spec, resolved)
    model = attach_adapter(model, spec, resolved, info)
    tmp = out.with_name(f".{out.name}.{time.time_ns()}.tmp")
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        record = {
            "kind": "merged",
            "base_model": {"name": resolved.name, "weights_sha256": resolved.weights_sha256},
            "adapter": {"path": str(info.path), "sha256": info.sha256, "trained_on": trained_on,
                        "manifest": trained or None},
            "dtype": dtype,
            "weights_sha256": {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))},
            "note": ("the adapter was trained on NF4 weights and is merged into unquantised ones: judge the merged "
                     "model as such (pytest -m tuned --quantization none)") if trained_on == "nf4" else None,
            "versions": versions(),
        }
        (tmp / "sunrise_export.json").write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _adapter_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
