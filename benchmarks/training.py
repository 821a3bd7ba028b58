"""Training throughput on the embedded default, and the share of the machine's matmul bound it reaches.

Measures, in one run on one machine: the bound itself (fp32 and bf16 GEMM, GFLOP/s), then a short run
of the full profile per lever, each in its own process (MKL reads its settings once per process), with
its non-padding tokens/s, median optimizer-step time, the fraction of the bound in the precision it
computed in (bf16 where the CPU has bf16 units, see TrainConfig.precision), and the losses
at the end. The levers are cumulative: each adds one change to the row above it, except where LEVERS
says otherwise. A data-parallel lever runs under torchrun. Prints a table and writes JSON.
A shared or throttled machine's speed drifts by 10-20 % over minutes: --rounds runs the levers again,
interleaved, and reports each lever's median.

    .venv/bin/python benchmarks/training.py --steps 4 --rounds 3 --out reports/benchmark-training.json

Model FLOPs per token are counted as train.throughput.flops_per_token says (4 x the matmul weights a
token passes through), the same for every lever.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

STUDY = {"batch_size": 2, "grad_accum": 4}  # the study's micro-batch (a VRAM limit), the CPU default before


@dataclass(frozen=True)
class Lever:
    overrides: dict  # TrainConfig overrides of the full profile
    env: dict = field(default_factory=dict)
    processes: int = 1  # > 1: data parallel under torchrun (gloo on a CPU)
    # torch.compile the decoder stack (in place, dynamic shapes: batches differ in length). Not a training
    # setting: measured no faster here, and the compile costs a minute or more (README, "Training throughput").
    compile_decoder: bool = False


# Cumulative, top to bottom, except where a comment says otherwise.
TORCH_DROPOUT = {"bits_dropout": False}  # torch's own dropout, the default before bits-dropout
UNFUSED = {"fused_head": False}  # transformers' LM head and loss over whole logits, the default before fused-head
CAST = {"uncast_lora_inputs": False}  # peft's float32 copy of each LoRA input, the default before uncast-lora-inputs
SDPA = {"attn_implementation": "sdpa"}  # torch's attention kernel, the default before eager-attention
DDP = {"OMP_NUM_THREADS": "1"}
LEVERS: dict[str, Lever] = {
    # The committed reference recipe as the harness ran it before: MKL pinned to strict mode on import.
    "today": Lever({"answer_logits": False, **STUDY, **TORCH_DROPOUT, **UNFUSED, **CAST, **SDPA},
                   {"MKL_CBWR": "AVX2,STRICT"}),
    # Training no longer pins MKL (harness.numerics).
    "mkl-auto": Lever({"answer_logits": False, **STUDY, **TORCH_DROPOUT, **UNFUSED, **CAST, **SDPA}),
    # the LM head on answer positions only (now the default)
    "answer-logits": Lever({**STUDY, **TORCH_DROPOUT, **UNFUSED, **CAST, **SDPA}),
    "batch8": Lever({**TORCH_DROPOUT, **UNFUSED, **CAST, **SDPA}),  # one micro-batch of 8 (now the CPU default)
    # LoRA dropout masks from random bits (train/dropout.py; now the CPU default)
    "bits-dropout": Lever({**UNFUSED, **CAST, **SDPA}),
    # The LM head and its loss over chunks of labelled positions (train/head_loss.py; now the default)
    "fused-head": Lever({**CAST, **SDPA}),
    # LoRA inputs under autocast without peft's float32 copies (train.trainer.lora_inputs_uncast; now the default)
    "uncast-lora-inputs": Lever(SDPA),
    # Eager attention in bf16 on a CPU instead of torch's flash-attention kernel (train.trainer._attention; now
    # the default there)
    "eager-attention": Lever({}),
    # ddp-2x1-cast (below) without fused-head: what the main job and the full profile ran before fused-head.
    "ddp-2x1-unfused": Lever({**UNFUSED, **CAST, **SDPA}, DDP, processes=2),
    # ddp-2x1 (below) with peft's float32 copies: what the main job and the full profile ran before uncast-lora-inputs.
    "ddp-2x1-cast": Lever({**CAST, **SDPA}, DDP, processes=2),
    # ddp-2x1 (below) with torch's attention kernel: what they ran before eager-attention.
    "ddp-2x1-sdpa": Lever(SDPA, DDP, processes=2),
    # The rows below each change one thing in eager-attention.
    # fp32 even where precision auto picks bf16 (a CPU with bf16 units), to see which is faster; fp32 trains
    # with SDPA (train.trainer._attention).
    "fp32": Lever({"precision": "fp32"}),
    # Two processes in fp32 (what the AVX2 class trains in), with SDPA and with eager attention: eager pays
    # in bf16 only (README, "Training throughput").
    "ddp-2x1-fp32": Lever({"precision": "fp32"}, DDP, processes=2),
    "ddp-2x1-fp32-eager": Lever({"precision": "fp32", "attn_implementation": "eager"}, DDP, processes=2),
    # Two processes of one thread each (torchrun, gloo), 4 records each (the same effective batch of 8):
    # the cores split across records instead of inside each operation.
    "ddp-2x1": Lever({}, DDP, processes=2),
    # One dropout mask for the LoRA layers that read the same input (train/dropout.py; an option, off by default:
    # README, "Training throughput"), in one process and in two.
    "share-dropout-masks": Lever({"share_dropout_masks": True}),
    "ddp-2x1-shared-masks": Lever({"share_dropout_masks": True}, DDP, processes=2),
    # The step time after the compile; wall_s shows what compiling the training and validation graphs cost.
    "compile": Lever({}, compile_decoder=True),
    "unquantised": Lever({"quantization": "none"}),  # plain LoRA on the full-precision base
    "bf16": Lever({"quantization": "none", "precision": "bf16"}),  # and bf16 autocast, even without bf16 units
}


def run_lever(name: str, data: Path, steps: int) -> dict | None:
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

    # No numerics check: it evaluates the saved adapter after training, which is not training throughput.
    config = profile("full").override(max_steps=steps, eval_steps=10**6, check_numerics=False,
                                      **LEVERS[name].overrides)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out, _compiled_decoder(LEVERS[name].compile_decoder):
        manifest = train(config, Path(out), data_dir=data, resume=False, callbacks=(clock,))
    if not manifest:  # a data-parallel process other than the first: the first one reports
        return None
    step = statistics.median(clock.seconds[1:])  # the first step pays for warm-up
    return {"precision": manifest["hyperparameters"]["precision_used"],
            "attention": manifest["hyperparameters"]["attn_implementation_used"],
            "micro_batch": "{} x {}".format(*manifest["hyperparameters"]["micro_batch_used"])
                           + (f" x {manifest['hyperparameters']['processes']} processes"
                              if manifest["hyperparameters"]["processes"] > 1 else ""),
            "median_step_s": round(step, 2),
            "wall_s": manifest["wall_seconds"],  # every step and the validation, compiling included
            "tokens_per_s": round(manifest["tokens_seen"] / manifest["steps"] / step, 1),
            "final_train_loss": manifest["final_train_loss"], "final_val_loss": manifest["final_val_loss"]}


@contextlib.contextmanager
def _compiled_decoder(on: bool):
    """While on, the model train() wraps with LoRA has its decoder stack compiled in place (so the adapter's
    weights keep their names)."""
    if not on:
        yield
        return
    import peft

    original = peft.get_peft_model

    def compiling(model, *args, **kwargs):
        wrapped = original(model, *args, **kwargs)
        wrapped.get_base_model().get_decoder().compile(dynamic=True)
        return wrapped

    with mock.patch("peft.get_peft_model", compiling):
        yield


def training_lengths(data: Path, split_quotes: str) -> list[int]:
    """Each training record's length in tokens, as train() encodes it."""
    from transformers import AutoTokenizer

    from harness.models import resolve_base
    from harness.schema import dumps
    from scenarios.records import read_cases
    from train.trainer import encode_example

    tokenizer = AutoTokenizer.from_pretrained(resolve_base("embedded").folder)
    return [encode_example(tokenizer, c.note, dumps(c.expected), split_quotes)["length"]
            for c in read_cases(data / "train.jsonl")]


def padding_share(lengths: list[int], micro_batch: int, grad_accum: int, seeds: range) -> float:
    """The share of the tokens in the training micro-batches that are padding, with the batches the Trainer
    draws (`group_by_length`: its LengthGroupedSampler over micro-batch x accumulation, in runs of that many
    records, each cut into micro-batches): what padding-free packing could save at most. The median of
    `seeds` epochs."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    shares = []
    for seed in seeds:
        order = list(LengthGroupedSampler(micro_batch * grad_accum, lengths=lengths,
                                          generator=torch.Generator().manual_seed(seed)))
        batches = [[lengths[i] for i in order[at:at + micro_batch]] for at in range(0, len(order), micro_batch)]
        shares.append(1 - sum(map(sum, batches)) / sum(max(b) * len(b) for b in batches))
    return statistics.median(shares)


def print_padding(data: Path) -> None:
    """The padding share for each quote split and each recipe's micro-batches (`--padding`)."""
    for split in ("nullable", "all"):  # the quick and full profiles'
        lengths = training_lengths(data, split)
        for micro, accum, how in ((4, 1, "4 in each of 2 processes"), (8, 1, "8 in one process"),
                                  (2, 4, "2 x 4, the GPU recipe")):
            share = padding_share(lengths, micro, accum, range(5))
            print(f"split quotes {split:8}, micro-batches of {how}: {share:.2%} of the tokens are padding")


def _run_child(name: str, data: Path, steps: int) -> dict:
    """One lever in its own process (or processes, under torchrun)."""
    lever = LEVERS[name]
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} | lever.env
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(lever.processes)]
              if lever.processes > 1 else [sys.executable])
    proc = subprocess.run([*launch, __file__, "--one", name, "--data", str(data), "--steps", str(steps)],
                          env=env, capture_output=True, text=True)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not result:
        sys.exit(f"lever {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(result[0][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per lever (8 records each)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every lever this many times, interleaved, and report the medians")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated, of {', '.join(LEVERS)}")
    parser.add_argument("--out", default="reports/benchmark-training.json")
    parser.add_argument("--padding", action="store_true",
                        help="print the share of padding in the training micro-batches (what packing could save) "
                             "for each micro-batch size and quote split, and exit")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one lever, JSON out
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_lever(args.one, Path(args.data), args.steps)
        if result:
            print("RESULT " + json.dumps(result))
        return
    from scenarios.splits import SplitSizes
    from train import write_dataset

    if args.padding:
        with tempfile.TemporaryDirectory() as tmp:
            write_dataset(Path(tmp), SplitSizes(train=450, val=0, test=0), seed=0)
            print_padding(Path(tmp))
        return
    chosen = [name.strip() for name in args.levers.split(",")]
    unknown = [name for name in chosen if name not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {unknown}; choose from {list(LEVERS)}")

    from transformers import AutoConfig

    from harness.environment import versions
    from harness.models import resolve_base
    from train.throughput import flops_per_token, matmul_bound

    bound = {dtype: round(matmul_bound(dtype), 1) for dtype in ("float32", "bfloat16")}
    per_token = flops_per_token(AutoConfig.from_pretrained(resolve_base("embedded").folder))
    print(f"matmul bound: fp32 {bound['float32']} GFLOP/s, bf16 {bound['bfloat16']} GFLOP/s "
          f"(MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')}); model FLOPs per token {per_token / 1e6:.0f} M",
          flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), SplitSizes(train=450, val=8, test=0), seed=0)
        for round_ in range(args.rounds):  # interleaved, so a slow spell of the machine hits every lever
            for name in chosen:
                runs[name].append(_run_child(name, Path(tmp), args.steps))
                print(f"round {round_ + 1}/{args.rounds} {name}: {runs[name][-1]['tokens_per_s']} tokens/s",
                      flush=True)
    rows = []
    for name in chosen:
        lever, each = LEVERS[name], runs[name]
        r = {"lever": name, "overrides": lever.overrides, "env": lever.env, "processes": lever.processes,
             **each[0],  # the losses are the same every round
             "median_step_s": round(statistics.median(x["median_step_s"] for x in each), 2),
             "wall_s": round(statistics.median(x["wall_s"] for x in each), 1),
             "tokens_per_s": round(statistics.median(x["tokens_per_s"] for x in each), 1),
             "tokens_per_s_each_round": [x["tokens_per_s"] for x in each]}
        r["bound_gflops"] = bound["bfloat16" if r["precision"] == "bf16" else "float32"]
        r["fraction_of_bound"] = round(r["tokens_per_s"] * per_token / 1e9 / r["bound_gflops"], 3)
        r["vs_today"] = round(r["tokens_per_s"] / (rows[0] if rows else r)["tokens_per_s"], 2)
        rows.append(r)
        print(f"{name:14} {r['precision']:5} {r['attention']:6} {r['micro_batch']:6} step {r['median_step_s']:6.2f} s "
              f"{r['tokens_per_s']:6.1f} tokens/s {r['fraction_of_bound']:6.1%} of the {r['precision']} bound "
              f"in {r['wall_s']:.0f} s "
              f"x{r['vs_today']:.2f}  loss {r['final_train_loss']:.4f} val {r['final_val_loss']:.4f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bound_gflops": bound, "model_flops_per_token": per_token,
                                          "steps": args.steps, "rounds": args.rounds, "levers": rows,
                                          "versions": versions()},
                                         indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
