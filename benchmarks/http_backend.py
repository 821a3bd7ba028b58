"""The HTTP backend against the project's own server, vs in process: same outputs? how fast?

The tuned model (embedded SmolLM2 + the reference adapter, NF4, free decoding, no generation cache)
decodes the first N notes of the test split: in process (the suite's batching), then through the
OpenAI-compatible HTTP backend against `sunrise serve` in a subprocess, at each concurrency. The
server batches requests that arrive together (harness/batcher.py). One concurrency level may take
fewer notes (`--serial-notes`), since one request at a time is slow on a CPU.

    .venv/bin/python -m benchmarks.http --notes 100 --out reports/benchmark-http.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _timed(backend, notes: list[str]) -> tuple[list, float]:
    from harness.models import GenerationSettings

    t0 = time.perf_counter()
    gens = backend.generate(notes, GenerationSettings())
    return gens, time.perf_counter() - t0


def main() -> None:
    from harness.models import HFBackend, ModelSpec
    from harness.openai_backend import HTTPOptions, OpenAIBackend, ServedModel
    from harness.settings import REFERENCE_ADAPTER
    from scenarios.splits import generate_split
    from tests.fakes.servers import server_process

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notes", type=int, default=100)
    ap.add_argument("--concurrency", default="16,4,1", help="comma-separated concurrency levels")
    ap.add_argument("--serial-notes", type=int, default=None, help="notes for concurrency 1 (default: --notes)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmark-http.json"))
    args = ap.parse_args()
    notes = [c.note for c in generate_split("test", args.notes)]

    local = HFBackend(ModelSpec(quantization="nf4", adapter=str(REFERENCE_ADAPTER)))
    reference, seconds = _timed(local, notes)
    rows = [{"way": "in process", "notes": len(notes), "seconds": round(seconds, 1),
             "notes_per_s": round(len(notes) / seconds, 3),
             "tokens_per_s": round(sum(g.new_tokens for g in reference) / seconds, 1)}]
    print(json.dumps(rows[-1]), flush=True)
    del local

    serve = [sys.executable, "-m", "harness.cli", "serve", "--port", "{port}", "--decoding", "free",
             "--adapter", str(REFERENCE_ADAPTER)]
    with server_process(serve, os.devnull) as url:
        for level in (int(c) for c in args.concurrency.split(",")):
            part = notes[:args.serial_notes] if level == 1 and args.serial_notes else notes
            remote = OpenAIBackend(ServedModel("tuned", url), HTTPOptions(concurrency=level, timeout_s=3600))
            gens, seconds = _timed(remote, part)
            rows.append({"way": f"HTTP, {level} in flight", "notes": len(part), "seconds": round(seconds, 1),
                         "notes_per_s": round(len(part) / seconds, 3),
                         "tokens_per_s": round(sum(g.new_tokens for g in gens) / seconds, 1),
                         "errors": sum(g.error is not None for g in gens),
                         "differ_from_in_process": sum(g.text != r.text
                                                       for g, r in zip(gens, reference, strict=False))})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
