"""QLoRA fine-tuning on chat-record JSONL with transformers' Trainer.

The base model is loaded frozen (4-bit NF4 by default), LoRA adapters are trained on the answer
tokens only (the prompt is masked out of the loss), batches are grouped by length so padding does
not eat the compute, and checkpoints every evaluation interval make a run resumable.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.atomic import staged_file, write_atomic
from harness.environment import versions
from harness.hashing import sha256_file
from harness.models import ModelSpec, load_base_model, peft_quietly, resolve_base
from harness.prompt import prompt_ids as encode_prompt
from scenarios.records import read_cases
from scenarios.splits import SplitSizes
from scenarios.vocab import HELD_OUT
from train.config import TrainConfig
from train.dataset import dataset_hash, dataset_provenance, write_dataset

IGNORE = -100  # label value the loss skips


# Where the answers are cut before BPE (encode_example): a string's closing quote before the bracket that
# follows it, and a key's colon before the opening quote of its value (of any key, or of the keys whose
# value may be null instead of a string).
_CLOSER, _OPENER = r'(?<=")(?=[}\]])', r'(?<=":)(?=")'
_NULLABLE_OPENER = r'(?<="name":)(?=")|(?<="gender":)(?=")'
QUOTE_SPLITS = {"none": None, "closers": re.compile(_CLOSER), "all": re.compile(f"{_CLOSER}|{_OPENER}"),
                "nullable": re.compile(f"{_CLOSER}|{_NULLABLE_OPENER}")}


def encode_example(tokenizer, note: str, answer: str, split_quotes: str = "none",
                   split_note_spaces: bool = False) -> dict:
    """Token ids and labels for one record; labels are IGNORE over the prompt (system, note, header).

    `split_quotes` cuts the answer before BPE so that quotes which carry a decision are their own
    tokens; the text is the same, only the token boundaries the model learns differ.
    - "closers": BPE merges a closing quote with the brace after it only when the list goes on
      ('"},' + '{"' before another reason, '"' + '}]' after the last), so the model must decide
      whether another item follows one token early, at the quote. Small models trained briefly get
      that wrong, writing '"' '}}' '},' (three braces). Split, the decision falls on the bracket.
    - "all", closers and openers: BPE also merges a key's colon with the quote that opens a string
      value ('"name' '":"' 'Thomas'), but not with null ('"name' '":' 'null'), so the token that
      ends the key also decides whether the value is null. Trained that way, adapters wrote a name
      for every note without one, training notes included (README, "The reference adapter"). Split,
      every key ends in '":' and the value's first token decides, as it always did for the age.
    - "nullable", closers and the openers of the string values that may be null (name, gender): the
      decisions "all" moves, without changing how the other values (reasons, medications, units)
      are written, which briefly trained adapters had learned to close (README, "The quick profile").
    `split_note_spaces` cuts the note at its spaces (harness.prompt.prompt_ids), so a value's first word
    is in the note as the answer writes it.
    """
    split = QUOTE_SPLITS[split_quotes]
    prompt_ids = encode_prompt(tokenizer, note, split_note_spaces=split_note_spaces)
    # Asked by id: get_vocab() builds the whole 49k-entry dict, 60 ms a call, 30 s over a dataset.
    end = "<|im_end|>" if tokenizer.convert_tokens_to_ids("<|im_end|>") not in (None, tokenizer.unk_token_id) \
        else tokenizer.eos_token
    pieces = split.split(answer) if split else [answer]
    pieces[-1] += end
    answer_ids = [i for piece in pieces for i in tokenizer(piece, add_special_tokens=False)["input_ids"]]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE] * len(prompt_ids) + answer_ids,
        "length": len(prompt_ids) + len(answer_ids),
    }


@dataclass
class PadCollator:
    """Right-pads a batch to its longest row; padded labels are ignored by the loss.

    With `answer_logits`, the LM head runs only from the first answer token on (transformers'
    `logits_to_keep`, labels cut to match): prompt positions carry no loss, and their logits are
    49k-wide rows that cost compute and memory for nothing. The loss is the same. The positions are
    given as indices, not as a count: a count slices the hidden states, and on a slice (a strided view
    that needs a gradient) torch's matmul does not fold the batch into one product but runs a batched
    one over the LM head's weight copied once per row, 8 x 576 x 49,152 values each way (the LM head
    took 0.95 s forward and backward instead of 0.22 s; README, "Training throughput"). Indexing
    gathers the rows into one contiguous block instead.
    """

    pad_id: int
    answer_logits: bool = False

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)

        def pad(key, value):
            return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

        batch = {
            "input_ids": pad("input_ids", self.pad_id),
            "labels": pad("labels", IGNORE),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                            for r in rows]),
        }
        if self.answer_logits:
            # The logit at position p predicts token p + 1, so keep from the position before the
            # earliest answer token; the model's loss shifts the cut labels the same way.
            first = min(next(i for i, x in enumerate(r["labels"]) if x != IGNORE) for r in rows)
            keep = width - first + 1
            batch["labels"] = batch["labels"][:, width - keep:]
            batch["logits_to_keep"] = torch.arange(width - keep, width)
        return batch


def _precision(config: TrainConfig) -> str:
    import torch

    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available():
        # GPUs such as the GTX 1070 Ti cannot scale bf16/fp16 gradients: full precision there.
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # CPUs with avx512-bf16/AMX: bf16 autocast measured ~25% faster here (215 vs 170 tokens/s).
    return "bf16" if _cpu_has_bf16() else "fp32"


def _attention(config: TrainConfig, precision: str) -> str | None:
    """The attention transformers trains with; None: its default (SDPA). In bf16 on a CPU, eager attention
    (batched matmuls and a softmax): torch's CPU flash-attention kernel took a quarter of a step there,
    and eager ran 1.11x as fast in two processes, at the same losses; in float32 it gained nothing
    (benchmarks/training.py, README "Training throughput")."""
    import torch

    if config.attn_implementation or precision != "bf16" or torch.cuda.is_available():
        return config.attn_implementation
    return "eager"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train(config: TrainConfig, out_dir: Path, data_dir: Path | None = None, resume: bool = True,
          callbacks: tuple = ()) -> dict:
    """Train a LoRA adapter; write adapter, train_log.jsonl, loss_curve.png and manifest.json to `out_dir`.

    Returns the manifest. An interrupted run (Ctrl-C, kill) resumes from its last checkpoint when
    called again with the same `out_dir`.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import ProgressCallback, Trainer, TrainingArguments

    from harness.plots import loss_curve_png
    from train.history import JsonlLogCallback
    from train.progress import TrainingProgress
    from train.throughput import flops_per_token, matmul_bound

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if data_dir is None:
        data_dir = out_dir / "data"
        write_dataset(data_dir, SplitSizes(config.train_records, config.val_records, 0), config.dataset_seed)
    data_dir = Path(data_dir)
    data_sha256 = dataset_hash(data_dir)  # hashed as read: the manifest names the data the adapter saw
    train_cases, val_cases = read_cases(data_dir / "train.jsonl"), read_cases(data_dir / "val.jsonl")

    precision = _precision(config)
    compute_dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[precision]
    attention = _attention(config, precision)
    spec = ModelSpec(base=config.base_model, quantization=config.quantization, dtype=compute_dtype,
                     attn_implementation=attention)
    resolved = resolve_base(spec.base)
    if int(os.environ.get("RANK", "0")):  # under torchrun: one process's bars are enough
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    tokenizer, model = load_base_model(spec, resolved, for_training=True)
    attention_used = model.config._attn_implementation  # what transformers resolved None to
    torch.manual_seed(config.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    with peft_quietly():
        model = get_peft_model(model, lora)
    bits_dropout = config.bits_dropout and not torch.cuda.is_available()  # a GPU's own dropout is cheap
    if bits_dropout:
        from train.dropout import use_bits_dropout

        use_bits_dropout(model)
    if config.share_dropout_masks:
        from train.dropout import share_dropout_masks

        share_dropout_masks(model)
    if config.fused_head:
        from train.head_loss import fuse_head_and_loss

        fuse_head_and_loss(model.get_base_model())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def encode(cases):
        from harness.schema import dumps

        return Dataset.from_list([encode_example(tokenizer, c.note, dumps(c.expected), config.split_quotes,
                                                 config.split_note_spaces)
                                  for c in cases])

    train_ds, val_ds = encode(train_cases), encode(val_cases)
    checkpoints = out_dir / "checkpoints"
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun and accelerate
    batch_size, grad_accum = config.micro_batch(on_gpu=torch.cuda.is_available(), processes=processes)
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(8, batch_size),
        gradient_accumulation_steps=grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.eval_steps,
        save_total_limit=1,
        logging_steps=1,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=config.seed,
        data_seed=config.seed,
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=True,
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # every LoRA weight is used each step; DDP warns that True costs a pass
        use_cpu=not torch.cuda.is_available(),
    )
    log_path = out_dir / "train_log.jsonl"
    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=PadCollator(tokenizer.pad_token_id, answer_logits=config.answer_logits),
        callbacks=[JsonlLogCallback(log_path), *callbacks],
        optimizers=(_optimizer(model, config), None),  # None: the Trainer's own (AdamW, cosine schedule)
    )
    trainer.remove_callback(ProgressCallback)  # it prints every log as a dict; ours shows them on one bar
    trainer.add_callback(TrainingProgress())
    last = _last_checkpoint(checkpoints) if resume else None
    _keep_log_until(log_path, int(last.name.rsplit("-", 1)[-1]) if last else 0)
    t0 = time.perf_counter()
    with lora_inputs_uncast(model, active=config.uncast_lora_inputs and precision != "fp32"):
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    wall = time.perf_counter() - t0
    if trainer.is_world_process_zero():
        # The adapter names its base by canonical name, which the harness checks at load time.
        model.peft_config["default"].base_model_name_or_path = resolved.name
        model.save_pretrained(str(out_dir), safe_serialization=True, save_embedding_layers=False)
        _cast_adapter(out_dir / "adapter_model.safetensors", config.adapter_dtype)
        (out_dir / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
        history = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        write_atomic(out_dir / "loss_curve.png", loss_curve_png(history, held_out=HELD_OUT.conditions[:4]))
        # Against every core the run's processes trained on: under torchrun each process has one thread
        bound = matmul_bound(compute_dtype, threads=torch.get_num_threads() * processes)
        # What this run resolved its settings to on this machine; micro_batch_used is per process, so the
        # effective batch is its product times the processes.
        used = {"precision_used": precision, "attn_implementation_used": attention_used,
                "micro_batch_used": [batch_size, grad_accum], "processes": processes,
                "bits_dropout_used": bits_dropout}
        manifest = _manifest(config, used, resolved, data_sha256, dataset_provenance(data_dir), len(train_ds),
                             len(val_ds), trainable,
                             history, wall, out_dir, trainer.state.num_input_tokens_seen,
                             (bound, flops_per_token(model.config)))
        write_manifest(out_dir, manifest)
        shutil.rmtree(checkpoints, ignore_errors=True)
        if config.check_numerics and processes == 1:
            del trainer, model  # the check loads the base twice more; one copy at a time
            manifest["numerics_check"] = _numerics_check(out_dir, config, val_cases)
            write_manifest(out_dir, manifest)
        elif config.check_numerics:  # one rank would check while the others wait, each on one thread
            print(f"numerics check skipped in {processes} processes: run `sunrise check-numerics --adapter "
                  f"{out_dir}` next", file=sys.stderr, flush=True)
    else:
        manifest = {}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # torchrun/accelerate: leave no process group behind, but free the DDP wrapper first. Freed after
        # its group (as these locals would be on return), the reducer's destructor can deadlock with
        # gloo's threads: seen once, a rank hung at exit after training had finished.
        trainer = model = None
        gc.collect()
        torch.distributed.destroy_process_group()
    return manifest


def _numerics_check(out_dir: Path, config: TrainConfig, val_cases) -> dict:
    """The saved adapter under each base numerics (train/numerics_check.py). The adapter and its
    manifest are already written: a check that fails is recorded as such and loses nothing."""
    import torch

    from train.numerics_check import announce, check_numerics, report_lines

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(announce(config.check_notes), file=sys.stderr, flush=True)
    try:
        result = check_numerics(out_dir, config.base_model, val_cases, config.check_notes)
    except Exception as exc:  # e.g. no memory for an unquantised copy of a large base
        print(f"numerics check failed, recorded in the manifest: {exc}", file=sys.stderr, flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}
    print("\n".join(report_lines(result)), file=sys.stderr, flush=True)
    return result


def _cast_adapter(path: Path, dtype: str) -> None:
    """Store the LoRA weights in `dtype` (loading casts them back to the model's dtype)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    target = getattr(torch, dtype)
    if all(t.dtype == target for t in tensors.values()):
        return
    with staged_file(path) as tmp:
        save_file({k: v.to(target).contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})


def lora_inputs_uncast(model, active: bool):
    """Where active (training under autocast), LoRA layers take their input in the dtype it comes in.

    peft casts each LoRA input to its float32 weights unless autocast is on, and asks CUDA's
    `torch.is_autocast_enabled()`, so under a CPU's bf16 autocast every adapted linear copied its bf16
    input to float32, dropped out there, and autocast copied it back to bf16 for the product, with
    the copies' gradients in the backward pass. The values are the same either way (bf16 times a
    dropout mask and a float32 scale rounds to bf16 once): a test checks loss and gradient bit for bit.
    """
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model, active=active)


def _optimizer(model, config: TrainConfig):
    """LoRA+'s optimizer when the config asks for it, else None (the Trainer's own AdamW)."""
    if config.loraplus_ratio is None:
        return None
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=config.learning_rate,
                                     loraplus_lr_ratio=config.loraplus_ratio)


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """`manifest.json` beside the adapter, written whole or not at all (training and
    `sunrise check-numerics` both write it)."""
    write_atomic(Path(out_dir) / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def _keep_log_until(log_path: Path, step: int) -> None:
    """On resume, drop log rows past the checkpoint (that work is redone); on a fresh start, all rows."""
    if not log_path.is_file():
        return
    rows = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    log_path.write_text("".join(row + "\n" for row in rows))


def _last_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]))
    return found[-1] if found else None


def how_to_remake(profile: str, processes: int, provenance: dict | None) -> str:
    """The commands that make the adapter again: its dataset, then its training, launched in as many
    processes (they change the data order each step sees)."""
    if provenance:
        sizes = " ".join(f"--{split} {n}" for split, n in provenance["sizes"].items())
        data = (f"sunrise dataset --out DATA --seed {provenance['seed']} {sizes} (generator version "
                f"{provenance['generator_version']}) && ")
    else:
        data = "the data whose sha256 is below as DATA, then "
    launcher = f"torchrun --nproc_per_node {processes} -m harness.cli train" if processes > 1 else "sunrise train"
    return (f"{data}{launcher} --profile {profile} --data DATA --out OUT, with any hyperparameter below that "
            "differs from the profile given as an option; the same machine class gives the same validation loss "
            "within noise")


def _manifest(config, used, resolved, data_sha256, provenance, n_train, n_val, trainable, history, wall, out_dir,
              tokens_seen, compute) -> dict:
    train_losses = [h["train_loss"] for h in history if h.get("train_loss") is not None]
    val_losses = [h["val_loss"] for h in history if h.get("val_loss") is not None]
    rates = [h["tokens_per_second"] for h in history if h.get("tokens_per_second")]
    rate = statistics.median(rates) if rates else None
    bound, per_token = compute
    return {
        "how_to_remake": how_to_remake(config.profile, used["processes"], provenance),
        "base_model": {"name": resolved.name, "weights_sha256": resolved.weights_sha256,
                       "nf4_grid": resolved.nf4_grid},  # True: the adapter holds under NF4 and unquantised alike
        "dataset": {"sha256": data_sha256, "train": n_train, "val": n_val,
                    "held_out_concepts": list(HELD_OUT.conditions), "generated": provenance},
        "hyperparameters": {**config.to_dict(), **used},
        "trainable_parameters": trainable,
        "versions": versions(),
        "wall_seconds": round(wall, 1),
        "tokens_seen": int(tokens_seen),
        # Training throughput (forward + backward, non-padding tokens), evaluations excluded: the median
        # of the per-step rates in the log.
        "tokens_per_second": round(rate, 1) if rate else None,
        # The machine's matmul bound in the precision used, measured after training, and the share of
        # it the run's useful FLOPs reached (train.throughput: 4 x matmul weights per token).
        "matmul_bound_gflops": round(bound, 1),
        "fraction_of_bound": round(rate * per_token / 1e9 / bound, 3) if rate else None,
        "steps": history[-1]["step"] if history else 0,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_val_loss": val_losses[-1] if val_losses else None,
        "adapter_sha256": sha256_file(out_dir / "adapter_model.safetensors"),
    }
