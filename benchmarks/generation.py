"""Generation throughput of the default model, in one run on one machine.

Measures notes/s and tokens/s for the tuned model (embedded SmolLM2 + the reference adapter) on the
same held-out notes: one-at-a-time versus batched, float32 versus NF4, and cold versus a fully cached
rerun. Prints a table and writes JSON.

    .venv/bin/python benchmarks/generation.py --notes 32 --out reports/benchmark-generation.json

`--nf4-arithmetic ROUNDS` measures instead NF4's arithmetic on this CPU, batched and cold, the
arithmetics interleaved ROUNDS times (medians): weights dequantised once (the harness), dequantised on
every call (bitsandbytes' path on a CPU without avx512_bf16: the same bits), and, on a CPU with
avx512_bf16, bitsandbytes' fused bfloat16 kernel (which the harness turns off).

`--kv-cache ROUNDS` measures the decoding loop's KV cache (harness.kv_cache) against transformers'
DynamicCache, for the base and the tuned model, cold and interleaved the same way.

`--lookahead ROUNDS` measures free decoding with drafted tokens (harness.decoding, `greedy_decode`)
against one token a step, for the base and the tuned model, on NF4, cold and interleaved the same way;
`--batch-size 1` one note at a time (as the property test shrinks), 0 in batches as the suite runs.
With `--decoding grounded` it measures grounded decoding instead, each run after a free run of the same
notes on the same backend (untimed, with drafts), as the suite runs the two.

`--merge ROUNDS` measures the tuned model on NF4 with its adapter attached (the default) against the
adapter merged into the weights dequantised once (`--merge-adapter`, harness.numerics.fold_adapter),
cold and interleaved the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from unittest import mock

from harness.cache import GenerationCache
from harness.environment import versions
from harness.generation import Generator
from harness.models import GenerationSettings, HFBackend, ModelSpec
from harness.numerics import dequantise_once
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


def nf4_backends(adapter: str) -> dict[str, HFBackend]:
    """The same model under each NF4 arithmetic this CPU can run, loaded side by side."""
    from bitsandbytes.functional import has_avx512bf16

    spec = ModelSpec(quantization="nf4", dtype="float32", adapter=adapter)
    backends = {"dequantised once": HFBackend(spec)}
    with mock.patch("harness.models.dequantise_once", lambda model: dequantise_once(model, memory_share=0)):
        backends["dequantised per call"] = HFBackend(spec)
    if has_avx512bf16():
        with mock.patch("harness.models.dequantise_once"), mock.patch("harness.models._disable_bnb_cpu_packing"):
            fused = HFBackend(spec)
        assert fused.identity["nf4_kernel"] == "cpu-bf16-fused"
        backends["bf16 fused kernel"] = fused
    return backends


def nf4_arithmetic(adapter: str, notes: list[str], batch_size: int, rounds: int) -> dict:
    settings = GenerationSettings(batch_size=batch_size)
    runs = {name: partial(run_cold, backend, settings, notes) for name, backend in nf4_backends(adapter).items()}
    return interleaved(runs, rounds, "arithmetic", len(notes))


def kv_caches(adapter: str, notes: list[str], batch_size: int, rounds: int) -> dict:
    """The decoding loop's KV cache (harness.kv_cache) against transformers' DynamicCache, for the base
    model (long answers, most cut where they loop) and the tuned one, on NF4."""
    from transformers import DynamicCache

    settings = GenerationSettings(batch_size=batch_size or None)

    def dynamic(backend: HFBackend) -> dict:
        with mock.patch("harness.kv_cache.growing_cache", lambda model: DynamicCache(config=model.config)):
            return run_cold(backend, settings, notes)

    runs = {}
    for model, adapter_ in (("base", None), ("tuned", adapter)):
        backend = HFBackend(ModelSpec(quantization="nf4", dtype="float32", adapter=adapter_))
        runs[f"{model}: growing (harness)"] = partial(run_cold, backend, settings, notes)
        runs[f"{model}: DynamicCache"] = partial(dynamic, backend)
    return interleaved(runs, rounds, "model: KV cache", len(notes))


def lookaheads(adapter: str, notes: list[str], batch_size: int, rounds: int, decoding: str = "free") -> dict:
    settings = GenerationSettings(batch_size=batch_size or None, decoding=decoding)
    runs = {f"{model}: {name}": partial(_with_lookahead, adapter_, on, settings, notes)
            for model, adapter_ in (("base", None), ("tuned", adapter))
            for name, on in (("one token a step", False), ("drafted tokens", True))}
    return interleaved(runs, rounds, "model: decoding", len(notes))


def _with_lookahead(adapter: str | None, on: bool, settings: GenerationSettings, notes: list[str]) -> dict:
    """A cold run on a freshly loaded backend: drafts may draw on the answers a backend wrote before. A
    constrained run comes after a free one, as in a suite: it replays the free answers and drafts from them."""
    backend = HFBackend(ModelSpec(quantization="nf4", dtype="float32", adapter=adapter))
    assert backend.lookahead, "drafting needs the batch-invariant numerics"
    if settings.constrained:
        run_cold(backend, GenerationSettings(batch_size=settings.batch_size), notes)
    backend.lookahead = on
    return run_cold(backend, settings, notes)


def merged(adapter: str, notes: list[str], batch_size: int, rounds: int) -> dict:
    settings = GenerationSettings(batch_size=batch_size or None)
    runs = {how: partial(run_cold, HFBackend(ModelSpec(quantization="nf4", dtype="float32", adapter=adapter,
                                                             merge_adapter=merge)), settings, notes)
            for how, merge in (("adapter attached", False), ("adapter merged", True))}
    return interleaved(runs, rounds, "NF4, the adapter", len(notes))


def run_cold(backend: HFBackend, settings: GenerationSettings, notes: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return measure(Generator(backend, settings, cache=GenerationCache(Path(tmp))), notes)


def interleaved(runs: dict, rounds: int, label: str, notes: int) -> dict:
    """Each of `runs` (name: a cold run) once per round, `rounds` rounds, for a machine whose speed
    drifts; medians, and each run's outputs against those of the first run of the same model (the
    name's part before ':'; where names have none, the first run)."""
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(run())
    rows = []
    for name, rs in results.items():
        first = next(n for n in results if ":" not in name or n.split(":")[0] == name.split(":")[0])
        reference = results[first][0]["outputs"]
        rows.append({label: name, "seconds": [r["seconds"] for r in rs],
                     "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                     "reference": first,
                     "outputs_differing": sum(a != b for a, b in zip(rs[0]["outputs"], reference, strict=True))})
    print(f"{label:28} {'seconds, each round':24} {'tokens/s':>9} {'x first':>7} {'outputs differ':>15}")
    medians = {row[label]: row["median_tokens_per_s"] for row in rows}
    for r in rows:
        print(f"{r[label]:28} {', '.join(f'{s:.1f}' for s in r['seconds']):24} "
              f"{r['median_tokens_per_s']:9.1f} {r['median_tokens_per_s'] / medians[r['reference']]:7.2f} "
              f"{r['outputs_differing']:>9d} of {notes}")
    return {"rounds": rounds, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--adapter", default=str(REFERENCE_ADAPTER))
    parser.add_argument("--out", default="reports/benchmark-generation.json")
    parser.add_argument("--nf4-arithmetic", type=int, metavar="ROUNDS", default=0,
                        help="compare NF4's arithmetics on this CPU instead (see above), over ROUNDS rounds")
    parser.add_argument("--kv-cache", type=int, metavar="ROUNDS", default=0,
                        help="compare the KV caches instead (see above), over ROUNDS rounds; --batch-size 0: "
                             "automatic, as the suite runs")
    parser.add_argument("--lookahead", type=int, metavar="ROUNDS", default=0,
                        help="compare free decoding with and without drafted tokens instead (see above), over "
                             "ROUNDS rounds; --batch-size 0: automatic")
    parser.add_argument("--decoding", choices=["free", "grounded"], default="free",
                        help="with --lookahead: the decoding measured")
    parser.add_argument("--merge", type=int, metavar="ROUNDS", default=0,
                        help="compare the adapter attached and merged on NF4 instead (see above), over ROUNDS "
                             "rounds; --batch-size 0: automatic")
    args = parser.parse_args()
    notes = [c.note for c in generate_split("test", args.notes, seed=7)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    comparisons = {"nf4_arithmetic": nf4_arithmetic, "kv_cache": kv_caches, "merge": merged,
                   "lookahead": partial(lookaheads, decoding=args.decoding)}  # option: its run
    chosen = next((name for name in comparisons if getattr(args, name)), None)
    if chosen:
        result = comparisons[chosen](args.adapter, notes, args.batch_size, getattr(args, chosen))
        out.write_text(json.dumps({"notes": args.notes, "batch_size": args.batch_size, **result,
                                   "cpus": os.cpu_count(), "versions": versions()}, indent=2))
        print(f"wrote {out}")
        return
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
    out.write_text(json.dumps({"notes": args.notes, "batch_size": args.batch_size, "rows": rows,
                               "speedups": speedups, "outputs_agree": agree, "cpus": os.cpu_count(),
                               "versions": versions()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
