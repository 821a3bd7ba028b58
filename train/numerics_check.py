"""A trained adapter under each base numerics it may be served with, measured before it ships.

An adapter trained on NF4 weights can lose much of what it learned on the unquantised ones that
merging, vLLM and llama.cpp use (README, "An adapter off the weights it was trained on"). Training
ends by loading the saved adapter on the base under NF4 and unquantised alike, as the harness serves
it, and records in the manifest each one's validation loss (teacher-forced on the validation split,
cheap) and, for `check_notes` > 0, its free answers to that many held-out test notes, scored: json and
schema validity, field F1. `holds` says whether the two are within TOLERANCE of each other.
A run in several processes (torchrun) skips it; `sunrise check-numerics --adapter DIR` runs it on the
saved adapter afterwards (`check_saved_adapter`) and records it the same way.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from datetime import date
from pathlib import Path

from harness.errors import HarnessError
from scenarios.notes import Case

NUMERICS = ("nf4", "none")
TOLERANCE = 0.02  # the bar for "holds": schema validity and field F1 within 0.02
FIGURES = ("json_valid", "schema_valid", "field_f1")


def check_numerics(adapter_dir: Path, base_model: str, val_cases: list[Case], notes: int) -> dict:
    """Each numerics' figures for the adapter in `adapter_dir`, the gaps between them, and `holds`; the
    validation loss on answers tokenised as the adapter was trained (its manifest says how)."""
    from harness.evaluation import score_split
    from harness.models import HFBackend, ModelSpec, inspect_adapter
    from scenarios.splits import generate_split

    split_quotes = inspect_adapter(adapter_dir).split_quotes
    test_cases = generate_split("test", notes) if notes else []
    figures = {}
    for quantization in NUMERICS:
        t0 = time.perf_counter()
        backend = HFBackend(ModelSpec(base=base_model, quantization=quantization, adapter=str(adapter_dir)))
        row = {"val_loss": round(validation_loss(backend, val_cases, split_quotes=split_quotes), 4)}
        if test_cases:
            run = score_split(backend, test_cases)
            row.update({m: round(run.metrics[m], 3) for m in FIGURES}, errors=run.errors)
        figures[quantization] = {**row, "seconds": round(time.perf_counter() - t0, 1)}
        del backend
        gc.collect()  # one base in memory at a time (a 3B base on an 8 GB GPU)
    out = {"numerics": figures, "test_notes": len(test_cases), "decoding": "free", "tolerance": TOLERANCE}
    if test_cases:
        gaps = {m: round(abs(figures["nf4"][m] - figures["none"][m]), 3) for m in ("schema_valid", "field_f1")}
        out.update(gaps=gaps, holds=all(g <= TOLERANCE for g in gaps.values()))
    return out


def announce(notes: int) -> str:
    """The line printed as the check starts (it takes minutes: two bases, each generating `notes` answers)."""
    return (f"numerics check: the adapter on NF4 and unquantised bases (validation loss"
            f"{f', {notes} test notes each' if notes else ''})")


def report_lines(result: dict) -> list[str]:
    """The check's figures as the trainer and `sunrise check-numerics` print them."""
    lines = [f"  {name:5} " + ", ".join(f"{k} {v}" for k, v in row.items()) for name, row in result["numerics"].items()]
    if "holds" in result:
        lines.append(f"  holds within {result['tolerance']}: {result['holds']} (gaps {result['gaps']})")
    return lines


def check_saved_adapter(adapter_dir: Path, notes: int, data_dir: Path | None = None,
                        base_model: str | None = None) -> dict:
    """The check on an adapter trained earlier, recorded in its manifest: as the trainer runs it, on the
    validation split the adapter was trained with (from `data_dir`, else regenerated as its manifest
    says) and on its base (its manifest's unless `base_model` is given)."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        hyper, dataset = manifest["hyperparameters"], manifest["dataset"]
    except (OSError, ValueError, KeyError) as exc:
        raise HarnessError(f"{path}: not a training manifest ({exc}); the check needs the one "
                           "`sunrise train` wrote beside the adapter") from exc
    from train.trainer import write_manifest

    val_cases = _training_validation(dataset, data_dir)
    result = check_numerics(adapter_dir, base_model or hyper["base_model"], val_cases, notes)
    manifest["numerics_check"] = {**result, "recorded": f"after training, by sunrise check-numerics, {date.today()}"}
    write_manifest(adapter_dir, manifest)
    return manifest["numerics_check"]


def _training_validation(dataset: dict, data_dir: Path | None) -> list[Case]:
    """The validation cases of the data a manifest names, checked against its sha256: the loss on other
    notes would not be comparable with the one training recorded."""
    from scenarios.splits import GENERATOR_VERSION, SplitSizes
    from train.dataset import write_dataset

    if data_dir is not None:
        return _checked_cases(Path(data_dir), dataset["sha256"], "the data in " + str(data_dir))
    made = dataset.get("generated")
    if not made:
        raise HarnessError("the adapter was trained on data from elsewhere; pass that folder as --data")
    if made["generator_version"] != GENERATOR_VERSION:
        raise HarnessError(f"the adapter's data came from dataset generator version {made['generator_version']}, "
                           f"this checkout has version {GENERATOR_VERSION}; pass the training data as --data")
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), SplitSizes(**made["sizes"]), made["seed"])
        return _checked_cases(Path(tmp), dataset["sha256"], "the regenerated dataset")


def _checked_cases(data_dir: Path, sha256: str, what: str) -> list[Case]:
    from scenarios.records import read_cases
    from train.dataset import dataset_hash

    if dataset_hash(data_dir) != sha256:
        raise HarnessError(f"{what} is not the data the adapter was trained on (its manifest's dataset sha256 "
                           f"{sha256[:12]}...); pass the training data as --data")
    return read_cases(data_dir / "val.jsonl")


def validation_loss(backend, cases: list[Case], batch_size: int = 8, split_quotes: str = "none") -> float:
    """Mean cross-entropy per answer token over `cases`, the prompt masked out: the model's own loss
    on training's encoding and collation, weighted by each batch's answer tokens."""
    import torch

    from harness.schema import dumps
    from train.trainer import IGNORE, PadCollator, encode_example

    collate = PadCollator(backend.tokenizer.pad_token_id, answer_logits=True)  # no LM head over the prompts
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(cases), batch_size):
            batch = collate([encode_example(backend.tokenizer, c.note, dumps(c.expected), split_quotes,
                                            backend.split_note_spaces)
                             for c in cases[start:start + batch_size]])
            tokens = int((batch["labels"][:, 1:] != IGNORE).sum())  # the loss shifts labels by one
            loss = backend.model(**{k: v.to(backend.model.device) if torch.is_tensor(v) else v
                                    for k, v in batch.items()}).loss
            total, count = total + loss.item() * tokens, count + tokens
    return total / count
