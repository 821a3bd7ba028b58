"""An adapter under the base numerics it may be served with: quality and speed on the same notes.

For each adapter and each base numerics (NF4, the training numerics of a QLoRA adapter; unquantised
float32, what merging and most servers use), generates the held-out test split (seed 0, free
decoding, batched) in process and scores it. Prints a table and writes JSON.

    .venv/bin/python benchmarks/numerics.py --adapter fixtures/reference-adapter --notes 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness.environment import versions
from harness.generation import Generator
from harness.models import GenerationSettings, HFBackend, ModelSpec
from harness.scoring import aggregate, score_case
from harness.settings import REFERENCE_ADAPTER
from scenarios.splits import generate_split

METRICS = ("json_valid", "schema_valid", "null_age", "med_count", "dose_split", "grounded", "field_f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", action="append", help="a LoRA folder; repeatable (default: the reference)")
    parser.add_argument("--quantization", default="nf4,none", help="comma-separated base numerics")
    parser.add_argument("--notes", type=int, default=100)
    parser.add_argument("--out", default="reports/benchmark-numerics.json")
    args = parser.parse_args()
    cases = generate_split("test", args.notes)
    rows = []
    for adapter in args.adapter or [str(REFERENCE_ADAPTER)]:
        for quantization in args.quantization.split(","):
            backend = HFBackend(ModelSpec(quantization=quantization, adapter=adapter))
            t0 = time.perf_counter()
            results = Generator(backend, GenerationSettings(decoding="free"), cache=None).run([c.note for c in cases])
            seconds = time.perf_counter() - t0
            metrics = aggregate([score_case(r.generation.text, c.expected, c.note)
                                 for r, c in zip(results, cases, strict=True)]).metrics()
            tokens = sum(r.generation.new_tokens for r in results)
            rows.append({"adapter": adapter, "quantization": quantization, "notes": len(cases),
                         "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 1),
                         **{m: round(metrics[m], 3) for m in METRICS}})
            print(f"{adapter:40} {quantization:5} " + " ".join(f"{m} {rows[-1][m]:.3f}" for m in METRICS)
                  + f"  {rows[-1]['tokens_per_s']} tokens/s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "versions": versions()}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
