"""Training throughput on the embedded default, and the share of the machine's matmul bound it reaches.

Measures, in one run on one machine: the bound itself (fp32 and bf16 GEMM, GFLOP/s), then a short run
of the full profile per lever, each in its own process (MKL reads its settings once per process), with
its non-padding tokens/s, median optimizer-step time, the fraction of the fp32 bound, and the losses
at the end. The levers are cumulative: each adds one change to the row above it. Prints a table and
writes JSON.

    .venv/bin/python benchmarks/training.py --steps 4 --out reports/benchmark-training.json

Model FLOPs per token are counted as train.throughput.flops_per_token says (4 x the matmul weights a
token passes through), the same for every lever.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = {"batch_size": 2, "grad_accum": 4}  # the study's micro-batch (a VRAM limit), the CPU default before
# name: (TrainConfig overrides of the full profile, environment). Cumulative, top to bottom.
LEVERS: dict[str, tuple[dict, dict]] = {
    # The committed reference recipe as the harness ran it before: MKL pinned to strict mode on import.
    "today": ({"answer_logits": False, **STUDY}, {"MKL_CBWR": "AVX2,STRICT"}),
    "mkl-auto": ({"answer_logits": False, **STUDY}, {}),  # training no longer pins MKL (harness.numerics)
    "answer-logits": (STUDY, {}),  # the LM head on answer positions only (now the default)
    "batch8": ({}, {}),  # one micro-batch of 8 (now the CPU default)
    "unquantised": ({"quantization": "none"}, {}),  # plain LoRA on the full-precision base
    "bf16": ({"quantization": "none", "precision": "bf16"}, {}),  # autocast, even without bf16 units
}


def run_lever(name: str, data: Path, steps: int) -> dict:
    """One lever's short training run, in this process: called through `--one` by `main`."""
    from transformers import TrainerCallback

    from train import profile, train

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._t0)

    overrides, _ = LEVERS[name]
    config = profile("full").override(max_steps=steps, eval_steps=10**6, **overrides)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        manifest = train(config, Path(out), data_dir=data, resume=False, callbacks=(clock,))
    step = statistics.median(clock.seconds[1:])  # the first step pays for warm-up
    return {"precision": manifest["hyperparameters"]["precision_used"],
            "micro_batch": "{} x {}".format(*manifest["hyperparameters"]["micro_batch_used"]),
            "median_step_s": round(step, 2),
            "tokens_per_s": round(manifest["tokens_seen"] / manifest["steps"] / step, 1),
            "final_train_loss": manifest["final_train_loss"], "final_val_loss": manifest["final_val_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per lever (8 records each)")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated, of {', '.join(LEVERS)}")
    parser.add_argument("--out", default="reports/benchmark-training.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one lever, JSON out
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_lever(args.one, Path(args.data), args.steps)))
        return
    chosen = [name.strip() for name in args.levers.split(",")]
    unknown = [name for name in chosen if name not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {unknown}; choose from {list(LEVERS)}")

    from transformers import AutoConfig

    from harness.environment import versions
    from harness.models import resolve_base
    from scenarios.splits import SplitSizes
    from train import write_dataset
    from train.throughput import flops_per_token, matmul_bound

    bound = {dtype: round(matmul_bound(dtype), 1) for dtype in ("float32", "bfloat16")}
    per_token = flops_per_token(AutoConfig.from_pretrained(resolve_base("embedded").folder))
    print(f"matmul bound: fp32 {bound['float32']} GFLOP/s, bf16 {bound['bfloat16']} GFLOP/s "
          f"(MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')}); model FLOPs per token {per_token / 1e6:.0f} M",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), SplitSizes(train=450, val=8, test=0), seed=0)
        for name in chosen:
            env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} | LEVERS[name][1]
            proc = subprocess.run([sys.executable, __file__, "--one", name, "--data", tmp, "--steps", str(args.steps)],
                                  env=env, capture_output=True, text=True)
            result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not result:
                sys.exit(f"lever {name} failed:\n{proc.stderr[-3000:]}")
            r = {"lever": name, "overrides": LEVERS[name][0], "env": LEVERS[name][1],
                 **json.loads(result[0][len("RESULT "):])}
            r["fraction_of_fp32_bound"] = round(r["tokens_per_s"] * per_token / 1e9 / bound["float32"], 3)
            r["vs_today"] = round(r["tokens_per_s"] / (rows[0] if rows else r)["tokens_per_s"], 2)
            rows.append(r)
            print(f"{name:14} {r['precision']:5} {r['micro_batch']:6} step {r['median_step_s']:6.2f} s "
                  f"{r['tokens_per_s']:6.1f} tokens/s {r['fraction_of_fp32_bound']:6.1%} of fp32 bound "
                  f"x{r['vs_today']:.2f}  loss {r['final_train_loss']:.4f} val {r['final_val_loss']:.4f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bound_gflops": bound, "model_flops_per_token": per_token,
                                          "steps": args.steps, "levers": rows, "versions": versions()},
                                         indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
