"""An adapter under the base numerics it may be served with: quality and speed on the same notes.

For each base, adapter and base numerics (NF4, the training numerics of a QLoRA adapter; unquantised
float32, what merging and most servers use), generates the held-out test split (seed 0, free
decoding, batched) in process and scores it; with --export, also each adapter merged by `sunrise
export` and loaded as a plain model; with --served, a model an OpenAI-compatible server serves, such
as llama.cpp's server of an exported GGUF. Prints a table and writes JSON.

    .venv/bin/python benchmarks/numerics.py --adapter fixtures/reference-adapter --notes 100
    sunrise prepare-base --out bases/nf4-grid
    .venv/bin/python benchmarks/numerics.py --base-model embedded --base-model bases/nf4-grid --export
    .venv/bin/python benchmarks/numerics.py --quantization nf4 --served openai:gguf@http://127.0.0.1:8080/v1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness.environment import versions
from harness.evaluation import score_split
from harness.export import export_merged
from harness.models import HFBackend, ModelSpec
from harness.openai_backend import HTTPOptions, OpenAIBackend, ServedModel
from harness.settings import REFERENCE_ADAPTER
from scenarios.splits import generate_split

METRICS = ("json_valid", "schema_valid", "null_age", "med_count", "dose_split", "grounded", "field_f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", action="append", help="a LoRA folder; repeatable (default: the reference)")
    parser.add_argument("--base-model", action="append", help="repeatable (default: embedded)")
    parser.add_argument("--export", action="store_true", help="also each adapter merged by sunrise export")
    parser.add_argument("--quantization", default="nf4,none", help="comma-separated base numerics")
    parser.add_argument("--served", action="append", default=[], help="a served model, openai:NAME@URL; repeatable")
    parser.add_argument("--http-concurrency", type=int, default=1, help="requests in flight to a served model")
    parser.add_argument("--http-extra-body", type=json.loads, default={},
                        help="JSON fields sent with every request, e.g. '{\"repeat_penalty\": 1}' for llama-cpp-python")
    parser.add_argument("--notes", type=int, default=100)
    parser.add_argument("--out", default="reports/benchmark-numerics.json")
    args = parser.parse_args()
    cases = generate_split("test", args.notes)
    rows = []
    adapters = args.adapter or [str(REFERENCE_ADAPTER)]
    runs = [(base, adapter, quantization, None) for base in args.base_model or ["embedded"]
            for adapter in adapters for quantization in args.quantization.split(",") if quantization]
    with tempfile.TemporaryDirectory() as tmp:
        if args.export:
            for i, adapter in enumerate(adapters):
                export_merged(adapter, Path(tmp) / str(i))
                runs.append((str(Path(tmp) / str(i)), None, "none", adapter))
        runs += [(served, None, "served", None) for served in args.served]
        for base, adapter, quantization, exported in runs:
            if quantization == "served":
                backend = OpenAIBackend(ServedModel.parse(base), HTTPOptions(concurrency=args.http_concurrency,
                                                                              extra_body=args.http_extra_body))
                label = f"{base} ({args.http_concurrency} in flight)"
            else:
                backend = HFBackend(ModelSpec(base=base, quantization=quantization, adapter=adapter))
                label = f"{backend.identity['model']}{' (nf4 grid)' if backend.resolved.nf4_grid else ''}"
                label = f"merged export of {exported}" if exported else f"{label} + {adapter}"
            run = score_split(backend, cases)
            rows.append({"base": label, "adapter": adapter, "quantization": quantization, "notes": len(cases),
                         "seconds": round(run.seconds, 1), "tokens_per_s": round(run.tokens / run.seconds, 1),
                         "errors": run.errors, **{m: round(run.metrics[m], 3) for m in METRICS}})
            print(f"{label:60} {quantization:6} " + " ".join(f"{m} {rows[-1][m]:.3f}" for m in METRICS)
                  + f"  {rows[-1]['tokens_per_s']} tokens/s, {rows[-1]['errors']} errors", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "versions": versions()}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
