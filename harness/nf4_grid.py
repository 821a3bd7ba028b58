"""A base on the NF4 grid: the weights 4-bit NF4 computes with, kept in full precision.

An adapter trained with QLoRA learns the NF4 copy of its base, not the base: on the as-shipped
weights (merged, or served unquantised) the reference adapter lost 0.11 field F1 and 38 points of
schema validity on the test split (benchmarks/numerics.py), because NF4 moves each weight matrix by
about 9 % of its norm and everything the adapter learned moves it by about 2 %. Replacing each
weight that NF4 quantises by its NF4 round trip removes that difference for good: quantising these
weights to NF4 again gives them back (each block's largest weight is exactly ±absmax, so the block
keeps its scale and every weight its code), so NF4 and full precision run the same model. The
weights come from bitsandbytes' own dequantisation of a model loaded the way the harness loads NF4,
so they are exactly what it computes with.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from harness.errors import HarnessError
from harness.model_folder import refuse_existing, write_model_folder

MARKER = "sunrise_base.json"  # in a prepared folder: what it was prepared from, and how


def nf4_grid_weights(spec, resolved) -> dict:
    """{parameter name: float32 tensor on the CPU} for every weight NF4 quantises in `resolved`."""
    import bitsandbytes as bnb

    from harness.models import load_base_model

    _, model = load_base_model(replace(spec, quantization="nf4", adapter=None, merge_adapter=False), resolved)
    return {f"{name}.weight": bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            .float().cpu()
            for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}


def snap_to_nf4(model, spec, resolved) -> int:
    """Put an unquantised base model's weights on the NF4 grid in place (before any adapter is
    attached); returns how many weight matrices changed."""
    import torch

    grid = nf4_grid_weights(spec, resolved)
    params = dict(model.named_parameters())
    missing = sorted(set(grid) - set(params))
    if missing:
        raise HarnessError(f"the NF4 copy has weights the model lacks ({', '.join(missing[:3])}); "
                           "snap the base before attaching an adapter")
    with torch.no_grad():
        for name, weight in grid.items():
            params[name].copy_(weight.to(params[name].dtype))
    return len(grid)


def prepare_base(base: str, out: str | Path, dtype: str = "float32") -> dict:
    """Write `out`: `base` with its weights on the NF4 grid, as a plain model folder, and MARKER.
    Train and serve from it (--base-model OUT) and an adapter behaves the same under NF4 and
    unquantised weights. `out` must not exist yet; it appears whole or not at all."""
    from harness.models import ModelSpec, load_base_model, resolve_base

    # sdpa, as in export: the harness's float64 attention must not be saved into config.json.
    spec = ModelSpec(base=base, quantization="none", dtype=dtype, attn_implementation="sdpa")
    out = refuse_existing(out, "prepare-base")
    resolved = resolve_base(base)
    if resolved.nf4_grid:
        raise HarnessError(f"{base} is already on the NF4 grid ({MARKER}); use it as it is")
    tokenizer, model = load_base_model(spec, resolved)
    snapped = snap_to_nf4(model, spec, resolved)
    return write_model_folder(out, model, tokenizer, MARKER, {
        "kind": "nf4-grid",
        # Adapters name their base by this; one trained on either folder fits the other.
        "name": resolved.name,
        "source": {"name": resolved.name, "weights_sha256": resolved.weights_sha256},
        "snapped_matrices": snapped,
        "dtype": dtype,
    })


def prepared_name(folder: Path) -> str | None:
    """The source model's name when `folder` was written by prepare_base, else None."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        return str(json.loads(marker.read_text())["name"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"{marker} is unreadable ({exc.__class__.__name__}: {exc})") from None
