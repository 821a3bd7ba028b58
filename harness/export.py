"""An adapter in the forms other engines load: merged into its base as a plain model folder (vLLM,
TGI, transformers without peft) or as one GGUF file, or a GGUF LoRA with its GGUF base (llama.cpp,
Ollama; harness.gguf_export runs llama.cpp's converters).

The merge needs unquantised weights. An adapter trained on NF4 weights (QLoRA) learned the NF4 copy of
its base, and on the as-shipped weights it loses much of what it learned (benchmarks/numerics.py),
so it is merged into the NF4 weights in full precision (harness.nf4_grid): the weights it was
trained on. The record says which.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.atomic import staged_folder
from harness.errors import HarnessError
from harness.gguf_export import convert, gguf_record, require_converters
from harness.model_folder import refuse_existing, write_model_folder, write_record
from harness.models import (
    AdapterInfo,
    ModelSpec,
    ResolvedBase,
    attach_adapter,
    check_adapter_base,
    inspect_adapter,
    load_base_model,
    resolve_base,
)
from harness.nf4_grid import prepare_base, snap_to_nf4

FORMATS = ("safetensors", "gguf", "gguf-lora")
RECORD = "sunrise_export.json"


def export_merged(adapter: str | Path, out: str | Path, base: str = "embedded", dtype: str = "float32") -> dict:
    """Write `out`: the base with `adapter` merged in (safetensors), its tokenizer, and
    `sunrise_export.json` (what was merged into what, hashes, the adapter's training numerics).
    Returns that record. `out` must not exist yet; it appears whole or not at all."""
    # sdpa, the engines' own attention, rather than the harness's batch-invariant float64 attention,
    # whose name would otherwise be saved into config.json. Built first: it validates the dtype.
    spec = ModelSpec(base=base, quantization="none", dtype=dtype, adapter=str(adapter), merge_adapter=True,
                     attn_implementation="sdpa")
    out = refuse_existing(out, "export")
    src = _Source.find(adapter, base)
    tokenizer, model = load_base_model(spec, src.resolved)
    if src.needs_grid:
        snap_to_nf4(model, spec, src.resolved)
    model = attach_adapter(model, spec, src.resolved, src.info)
    return write_model_folder(out, model, tokenizer, RECORD, {
        "kind": "merged", "base_model": src.base_record(), "adapter": src.adapter_record(),
        "merged_into": src.weights, "dtype": dtype})


def export_gguf(adapter: str | Path, out: str | Path, base: str = "embedded", outtype: str = "f16") -> dict:
    """Write `out`: model.gguf, the adapter merged as export_merged merges it and converted by
    llama.cpp, and RECORD. `out` must not exist yet; it appears whole or not at all."""
    out = refuse_existing(out, "export")
    require_converters()
    with staged_folder(out) as tmp:
        merged = export_merged(adapter, tmp / "merged", base=base)
        convert("convert_hf_to_gguf.py", [str(tmp / "merged"), "--outfile", str(tmp / "model.gguf"),
                                          "--outtype", outtype])
        shutil.rmtree(tmp / "merged")
        merged.pop("versions")
        converted_from = merged.pop("weights_sha256")
        return write_record(tmp, RECORD, {
            **merged, "kind": "merged gguf", "converted_from_sha256": converted_from, "dtype": outtype,
            "gguf": gguf_record(tmp / "model.gguf", outtype)})


def export_gguf_lora(adapter: str | Path, out: str | Path, base: str = "embedded", outtype: str = "f16") -> dict:
    """Write `out`: adapter.gguf (the LoRA), base.gguf (the base it belongs on: the NF4 grid for a QLoRA
    adapter) and RECORD, all from llama.cpp's converters. Served on another copy of the base, such as
    the Q4_1 GGUF the embedded model ships as, the adapter loses what it learned."""
    out = refuse_existing(out, "export")
    require_converters()
    src = _Source.find(adapter, base)
    with staged_folder(out) as tmp:
        base_folder = Path(src.resolved.folder)
        if src.needs_grid:
            base_folder = tmp / "grid"
            prepare_base(base, base_folder)
        elif not base_folder.is_dir():
            raise HarnessError(f"{base} is not a local folder; llama.cpp's converters read the base from disk, "
                               "so pass --base-model DIR")
        convert("convert_hf_to_gguf.py", [str(base_folder), "--outfile", str(tmp / "base.gguf"), "--outtype", outtype])
        convert("convert_lora_to_gguf.py", ["--base", str(base_folder), "--outfile", str(tmp / "adapter.gguf"),
                                            "--outtype", outtype, str(src.info.path)])
        shutil.rmtree(tmp / "grid", ignore_errors=True)
        return write_record(tmp, RECORD, {
            "kind": "gguf lora",
            "base_model": {**src.base_record(), "gguf": gguf_record(tmp / "base.gguf", outtype)},
            "adapter": {**src.adapter_record(), "gguf": gguf_record(tmp / "adapter.gguf", outtype)},
            "base_weights": src.weights, "dtype": outtype})


@dataclass(frozen=True)
class _Source:
    """An adapter and the base it was checked against, with how it was trained."""

    info: AdapterInfo
    resolved: ResolvedBase

    @classmethod
    def find(cls, adapter: str | Path, base: str) -> _Source:
        info = inspect_adapter(adapter)
        if info.split_note_spaces:
            raise HarnessError(f"{info.path} was trained on notes cut at their spaces (--split-note-spaces); "
                               "llama.cpp tokenizes the note itself and would read it otherwise, so it is not "
                               "exported. Evaluate it in process, or serve the adapter folder with `sunrise "
                               "serve` or vLLM and name it openai:NAME#FOLDER, which sends token ids")
        resolved = resolve_base(base)
        check_adapter_base(info, resolved)
        return cls(info, resolved)

    @property
    def manifest(self) -> dict:
        return self.info.manifest

    @property
    def trained_on(self) -> str | None:
        return self.manifest.get("hyperparameters", {}).get("quantization")

    @property
    def needs_grid(self) -> bool:
        """A QLoRA adapter on a base not yet on the NF4 grid: put it there first."""
        return self.trained_on == "nf4" and not self.resolved.nf4_grid

    @property
    def weights(self) -> str:
        return "nf4 grid" if self.trained_on == "nf4" or self.resolved.nf4_grid else "the base as loaded"

    def base_record(self) -> dict:
        return {"name": self.resolved.name, "weights_sha256": self.resolved.weights_sha256}

    def adapter_record(self) -> dict:
        return {"path": str(self.info.path), "sha256": self.info.sha256, "trained_on": self.trained_on,
                "manifest": self.manifest or None}
