"""Generation throughput of the default model, in one run on one machine.

Measures notes/s and tokens/s for the tuned model (embedded SmolLM2 + the reference adapter) on the
same held-out notes: one-at-a-time versus batched, float32 versus NF4, and cold versus a fully cached
rerun. Prints a table and writes JSON.

    .venv/bin/python benchmarks/generation.py --notes 32 --out reports/benchmark-generation.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from harness.cache import GenerationCache
from harness.environment import versions
from harness.generation import Generator
from harness.models import GenerationSettings, HFBackend, ModelSpec
from harness.settings import REFERENCE_ADAPTER
from scenarios.splits import generate_split


def measure(generator: Generator, notes: list[str]) -> dict:
    t0 = time.perf_counter()
    results = generator.run(notes)
    seconds = time.perf_counter() - t0
    tokens = sum(r.generation.new_tokens for r in results)
    return {"seconds": round(seconds, 2), "notes_per_s": round(len(notes) / seconds, 3),
            "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "hit_bound": sum(not (r.generation.stopped or r.generation.looped) for r in results),
            "looped": sum(r.generation.looped for r in results),
            "outputs": [r.generation.text for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--adapter", default=str(REFERENCE_ADAPTER))
    parser.add_argument("--out", default="reports/benchmark-generation.json")
    args = parser.parse_args()
    notes = [c.note for c in generate_split("test", args.notes, seed=7)]
    rows, outputs = [], {}
    for quantization, dtype in (("none", "float32"), ("nf4", "float32")):
        backend = HFBackend(ModelSpec(quantization=quantization, dtype=dtype, adapter=args.adapter))
        label = "float32" if quantization == "none" else "NF4"
        for mode, batch in (("one at a time", 1), ("batched", args.batch_size)):
            settings = GenerationSettings(batch_size=batch)
            with tempfile.TemporaryDirectory() as tmp:
                cache = GenerationCache(Path(tmp))
                cold = measure(Generator(backend, settings, cache=cache), notes)
                rows.append({"weights": label, "mode": mode, "run": "cold", **cold})
                if batch > 1:
                    warm = measure(Generator(backend, settings, cache=cache), notes)
                    rows.append({"weights": label, "mode": mode, "run": "cached", **warm})
            outputs[(label, mode)] = cold["outputs"]
    for row in rows:
        row.pop("outputs")
    agree = {f"{w}: batched == one at a time": outputs[(w, "batched")] == outputs[(w, "one at a time")]
             for w in ("float32", "NF4")}
    by = {(r["weights"], r["mode"], r["run"]): r for r in rows}
    speedups = {
        f"{w} batched / one at a time": round(by[(w, "batched", "cold")]["notes_per_s"]
                                              / by[(w, "one at a time", "cold")]["notes_per_s"], 1)
        for w in ("float32", "NF4")
    } | {
        f"{w} cached / cold (batched)": round(by[(w, "batched", "cached")]["notes_per_s"]
                                              / by[(w, "batched", "cold")]["notes_per_s"], 1)
        for w in ("float32", "NF4")
    }
    print(f"{'weights':8} {'mode':14} {'run':7} {'seconds':>8} {'notes/s':>9} {'tokens':>7} {'tokens/s':>9} "
          f"{'hit bound':>9} {'looped':>6}")
    for r in rows:
        print(f"{r['weights']:8} {r['mode']:14} {r['run']:7} {r['seconds']:8.2f} {r['notes_per_s']:9.3f} "
              f"{r['tokens']:7d} {r['tokens_per_s']:9.1f} {r['hit_bound']:9d} {r['looped']:6d}")
    for k, v in speedups.items():
        print(f"{k}: {v}x")
    for k, v in agree.items():
        print(f"{k}: {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"notes": args.notes, "batch_size": args.batch_size, "rows": rows,
                               "speedups": speedups, "outputs_agree": agree, "cpus": os.cpu_count(),
                               "versions": versions()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
