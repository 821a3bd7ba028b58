"""Do outputs depend on the batch? Batched against one-at-a-time generation, before and after the
batch-invariant numerics (harness/numerics.py), with tokens/s for each.

The tuned model (embedded SmolLM2 + the reference adapter, NF4 as the suite runs it) decodes the
first N notes of the test split, free decoding, no cache: all together (the suite's batching), then
one at a time. Each setting runs in its own process, because MKL reads its reproducibility mode once:
  - 'batch-dependent': MKL_CBWR=AUTO and transformers' SDPA attention (the numerics before);
  - 'batch-invariant': the harness's defaults (MKL_CBWR=AVX2,STRICT, float64 attention; invariant
    products, padded to 4 rows or in float64, where MKL's strict mode does not take, as on AMD CPUs).
Writes JSON with, per setting, how many outputs differ and the tokens/s of each way.

    .venv/bin/python benchmarks/batch_invariance.py --notes 100 --out reports/benchmark-batch-invariance.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"batch-dependent": ({"MKL_CBWR": "AUTO"}, "sdpa"), "batch-invariant": ({}, None)}


def measure(notes: int, attn: str | None) -> dict:
    from harness.generation import Generator
    from harness.models import GenerationSettings, HFBackend, ModelSpec
    from harness.settings import REFERENCE_ADAPTER
    from scenarios.splits import generate_split

    backend = HFBackend(ModelSpec(quantization="nf4", adapter=str(REFERENCE_ADAPTER), attn_implementation=attn))
    texts = [c.note for c in generate_split("test", notes)]
    runs = {}
    for way, size in (("batched", None), ("one at a time", 1)):
        t0 = time.perf_counter()
        results = Generator(backend, GenerationSettings(batch_size=size), cache=False).run(texts)
        seconds = time.perf_counter() - t0
        tokens = sum(r.generation.new_tokens for r in results)
        runs[way] = {"outputs": [r.generation.text for r in results], "tokens_per_s": round(tokens / seconds, 1)}
    differ = [i for i, (a, b) in enumerate(zip(runs["batched"]["outputs"], runs["one at a time"]["outputs"],
                                               strict=True)) if a != b]
    return {"numerics": backend.identity["numerics"], "notes": notes, "differ": len(differ), "differ_ids": differ,
            **{f"{way} tokens/s": r["tokens_per_s"] for way, r in runs.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notes", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("reports/benchmark-batch-invariance.json"))
    ap.add_argument("--one", choices=SETTINGS, help=argparse.SUPPRESS)  # a child process: one setting
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.notes, SETTINGS[args.one][1])))
        return
    result = {}
    for name, (env, _) in SETTINGS.items():
        out = subprocess.run([sys.executable, __file__, "--notes", str(args.notes), "--one", name],
                             env={**os.environ, **env}, check=True, capture_output=True, text=True).stdout
        result[name] = json.loads(out.strip().splitlines()[-1])
        print(name, json.dumps(result[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
