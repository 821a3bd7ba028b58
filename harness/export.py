"""An adapter in the form other engines load: merged into its base, as one plain model folder.

vLLM, TGI or transformers without peft load the folder as they load any Hugging Face model. The
merge needs unquantised weights. An adapter trained on NF4 weights (QLoRA) learned the NF4 copy of
its base, and on the as-shipped weights it loses much of what it learned (benchmarks/numerics.py),
so it is merged into the NF4 weights in full precision (harness.nf4_grid): the weights it was
trained on. The record says which.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.model_folder import refuse_existing, write_model_folder
from harness.models import (
    ModelSpec,
    attach_adapter,
    check_adapter_base,
    inspect_adapter,
    load_base_model,
    resolve_base,
)
from harness.nf4_grid import snap_to_nf4


def export_merged(adapter: str | Path, out: str | Path, base: str = "embedded", dtype: str = "float32") -> dict:
    """Write `out`: the base with `adapter` merged in (safetensors), its tokenizer, and
    `sunrise_export.json` (what was merged into what, hashes, the adapter's training numerics).
    Returns that record. `out` must not exist yet; it appears whole or not at all."""
    # sdpa, the engines' own attention, rather than the harness's batch-invariant float64 attention,
    # whose name would otherwise be saved into config.json. Built first: it validates the dtype.
    spec = ModelSpec(base=base, quantization="none", dtype=dtype, adapter=str(adapter), merge_adapter=True,
                     attn_implementation="sdpa")
    out = refuse_existing(out, "export")
    info = inspect_adapter(adapter)
    resolved = resolve_base(base)
    check_adapter_base(info, resolved)
    trained = _adapter_manifest(info.path)
    trained_on = trained.get("hyperparameters", {}).get("quantization")
    tokenizer, model = load_base_model(spec, resolved)
    if trained_on == "nf4" and not resolved.nf4_grid:
        snap_to_nf4(model, spec, resolved)
    model = attach_adapter(model, spec, resolved, info)
    return write_model_folder(out, model, tokenizer, "sunrise_export.json", {
        "kind": "merged",
        "base_model": {"name": resolved.name, "weights_sha256": resolved.weights_sha256},
        "adapter": {"path": str(info.path), "sha256": info.sha256, "trained_on": trained_on,
                    "manifest": trained or None},
        "merged_into": "nf4 grid" if trained_on == "nf4" or resolved.nf4_grid else "the base as loaded",
        "dtype": dtype,
    })


def _adapter_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
