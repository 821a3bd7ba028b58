"""A served model that loops: its answers streamed and cut where they start repeating, against read whole.

The base model (the embedded model's own GGUF) served by llama.cpp's OpenAI-compatible server
(llama-cpp-python, which scripts/setup.sh builds), greedy (repeat_penalty 1), one request at a time,
decodes the seed, curated and test-split notes (the first N) through the HTTP backend twice a round:
streamed with the loop cut (harness.decoding.LoopWatch, the default) and read whole (the backend
before it streamed). Prints seconds, tokens and looped answers per round, and checks that each cut
answer is the start of the whole one; writes JSON.

    PYTHONPATH=. .venv/bin/python benchmarks/served_loops.py --notes 40 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    from harness.embedded import embedded_gguf
    from harness.models import GenerationSettings
    from harness.openai_backend import HTTPOptions, OpenAIBackend, ServedModel
    from scenarios import CURATED, SEED, generate_split
    from tests.fakes.servers import server_process

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notes", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="reports/benchmark-served-loops.json")
    args = ap.parse_args()
    notes = [c.note for c in [*SEED, *CURATED, *generate_split("test", 100)]][:args.notes]
    serve = [sys.executable, "-m", "llama_cpp.server", "--host", "127.0.0.1", "--port", "{port}", "--model",
             str(embedded_gguf()), "--model_alias", "base", "--n_ctx", "4096", "--n_threads", "2"]
    rows, answers = [], {}
    with tempfile.TemporaryDirectory() as tmp, server_process(serve, Path(tmp) / "llama_cpp.log") as url:
        backend = OpenAIBackend(ServedModel("base", url), HTTPOptions(concurrency=1, extra_body={"repeat_penalty": 1}))
        for round_ in range(1, args.rounds + 1):
            for streams in (True, False):
                backend.streams = streams
                t0 = time.perf_counter()
                gens = backend.generate(notes, GenerationSettings())
                rows.append({"round": round_, "way": "streamed, cut" if streams else "read whole",
                             "seconds": round(time.perf_counter() - t0, 1),
                             "tokens": sum(g.new_tokens for g in gens), "looped": sum(g.looped for g in gens),
                             "errors": sum(bool(g.error) for g in gens)})
                answers[streams] = [g.text for g in gens]
                print(rows[-1], flush=True)
    starts = sum(whole.startswith(cut) for cut, whole in zip(answers[True], answers[False], strict=True))
    print(f"cut answers that are the start of the whole answer: {starts} of {len(notes)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"notes": len(notes), "rows": rows, "cut_is_start": starts}, indent=2))


if __name__ == "__main__":
    main()
