"""Constrained versus free decoding: throughput and the cost of the token masks, in one run.

The tuned model (embedded SmolLM2 + the reference adapter, NF4 as the suite runs it) decodes the same
held-out notes under free, schema and grounded decoding, one at a time and in batches, with no cache.
For each it reports tokens/s, the time spent computing and applying masks (per generated token and
as a share of the run), and each constrained mode's rate relative to free decoding. Each constrained
mode runs twice: on a backend that never decoded these notes freely (what the constraint costs), and
on the one that just did (as in a suite, where a constrained answer is replayed from the free one as
far as the grammar allows it; `replayed_rows` and `replayed_tokens` count what that saved). Writes JSON.

    .venv/bin/python benchmarks/decoding.py --notes 32 --out reports/benchmark-decoding.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from harness.constraint import ConstraintStats
from harness.environment import versions
from harness.generation import Generator
from harness.grammar import DECODINGS
from harness.models import GenerationSettings, HFBackend, ModelSpec
from harness.settings import REFERENCE_ADAPTER
from scenarios.splits import generate_split


def measure(backend: HFBackend, notes: list[str], settings: GenerationSettings) -> dict:
    backend.constraint_stats = ConstraintStats()
    t0 = time.perf_counter()
    results = Generator(backend, settings, cache=False).run(notes)
    seconds = time.perf_counter() - t0
    tokens = sum(r.generation.new_tokens for r in results)
    stats = backend.constraint_stats
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "mask_ms_per_token": round(1000 * stats.mask_seconds / max(1, stats.masked_steps), 3),
            "mask_share": round(stats.mask_seconds / seconds, 4), "errors": sum(r.error is not None for r in results),
            "constraint": asdict(stats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated")
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    parser.add_argument("--adapter", default=str(REFERENCE_ADAPTER))
    parser.add_argument("--out", default="reports/benchmark-decoding.json")
    args = parser.parse_args()
    notes = [c.note for c in generate_split("test", args.notes, seed=7)]
    spec = ModelSpec(quantization=args.quantization, adapter=args.adapter)
    backend, scratch = HFBackend(spec), HFBackend(spec)  # scratch never decodes freely: nothing to replay
    for model in (backend, scratch):
        model.constraint_tokenizer()  # built once per model (about a second); not part of any run
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        runs = [("free", backend, False)] + [(mode, model, model is backend) for model in (scratch, backend)
                                             for mode in DECODINGS if mode != "free"]
        for mode, model, after_free in runs:
            row = {"decoding": mode, "batch_size": batch, "after_free": after_free,
                   **measure(model, notes, GenerationSettings(batch_size=batch, decoding=mode))}
            rows.append(row)
            free = next(r for r in rows if r["decoding"] == "free" and r["batch_size"] == batch)
            row["rate_vs_free"] = round(row["tokens_per_s"] / free["tokens_per_s"], 2)
            print(f"{mode:9}{' after free' if after_free else '':11} batch {batch:3d}: {row['seconds']:7.2f} s "
                  f"{row['tokens']:6d} tokens {row['tokens_per_s']:7.1f} tokens/s ({row['rate_vs_free']:.2f}x free), "
                  f"masks {row['mask_ms_per_token']:.3f} ms/token = {100 * row['mask_share']:.1f}% of the run, "
                  f"{row['constraint']['replayed_rows']} answers replayed, {row['errors']} errors", flush=True)
    report = {"notes": args.notes, "quantization": args.quantization, "adapter": args.adapter,
              "device": str(backend.model.device), "rows": rows, "versions": versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
