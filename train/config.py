"""Training configuration as typed data: defaults from the original study, named profiles on top."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, get_args

Precision = Literal["auto", "fp32", "bf16", "fp16"]
QuoteSplit = Literal["none", "closers", "all", "nullable"]
EFFECTIVE_BATCH = 8  # the study's 2 x 4
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")  # the study's recipe: all attention linears
MLP = ("gate_proj", "up_proj", "down_proj")  # Llama/Qwen-family names


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of a QLoRA run. Each field is overridable from the command line."""

    profile: str = "custom"  # the named profile these settings started from
    base_model: str = "embedded"  # "embedded", a Hugging Face id, a folder or a .gguf file
    quantization: Literal["nf4", "none"] = "nf4"  # frozen base weights in 4-bit NF4 (QLoRA)
    rank: int = 16  # LoRA r: enough capacity for schema syntax without wasting memory
    alpha: int = 32  # 2 x rank, so the adapter's updates are strong enough against frozen weights
    dropout: float = 0.05  # against overfitting 500 synthetic records
    target_modules: tuple[str, ...] = ATTENTION
    # Per process; None: the effective batch of 8 (EFFECTIVE_BATCH) split across processes: one micro-batch
    # of 8 on a CPU (two processes under torchrun: 4 each), the study's 2 x 4 on a GPU (a VRAM limit there;
    # on a CPU one micro-batch of 8 is 7 % faster at the same loss, benchmarks/training.py). Set either
    # and the other still fills the effective batch of 8 where it divides.
    batch_size: int | None = None
    grad_accum: int | None = None
    learning_rate: float = 2e-4
    # LoRA+ (Hayou et al. 2024): the B matrices learn this many times faster than the A ones (which take
    # learning_rate); None: one learning rate for both, the study's recipe. Measured at 2x to 16x: a lower
    # validation loss, not a better adapter (README, "The reference adapter").
    loraplus_ratio: float | None = None
    warmup_steps: int = 5
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    eval_steps: int = 50  # validation loss (no weight updates) and a checkpoint every this many steps
    precision: Precision = "auto"  # auto: bf16 where the GPU or CPU has bf16 units, else fp32 (GTX 10xx)
    # None: eager on a CPU training in bf16 (faster there), transformers' default (SDPA) elsewhere
    # (train.trainer._attention); "eager" for old GPUs
    attn_implementation: str | None = None
    # Answers tokenised with the quotes that carry a decision on their own (train.trainer.encode_example):
    # "closers" before a bracket, "all" the opening quotes of values as well. The same text, decisions the
    # model learns sooner: "all" is what taught the reference adapter to write null for a missing name;
    # "nullable" moves that decision for name and gender only (the quick profile's).
    split_quotes: QuoteSplit = "all"
    # The note cut at its spaces before BPE, so a value's first word is the tokens the answer writes
    # (harness.prompt.prompt_ids); the adapter is then read the same way wherever this project loads it.
    # Two epochs of the full profile, seeds 1 and 0: field F1 0.894 and 0.885 against 0.850 on the 100 test
    # notes; with 3 epochs 0.925 and 0.924 (README, "The note cut at its spaces"). On in the full profile, off
    # by default: a server that tokenizes the note itself (llama.cpp) reads it the usual way (vLLM takes the
    # token ids the harness sends).
    split_note_spaces: bool = False
    answer_logits: bool = True  # LM head on answer positions only: same loss, less compute (benchmarks/training.py)
    # The LM head and cross-entropy over chunks of labelled positions, the 49k-wide logits never whole
    # (train/head_loss.py): the same loss, less memory traffic
    fused_head: bool = True
    # LoRA dropout masks from random bits on a CPU: the same dropout, a cheaper mask (train/dropout.py)
    bits_dropout: bool = True
    # One LoRA dropout mask per input of a module: q, k and v drop the same values of their input, gate and
    # up theirs, as LoRA on a fused qkv linear does; each layer still drops `dropout` of what it reads.
    # 4 masks a layer instead of 7: 1.09x a step in one process, 1.14x in two on 2 cores (train/dropout.py,
    # benchmarks/training.py). Off by default: over three seeds of the full profile, the same validation
    # loss and field F1, but fewer medications counted right, and seed 0 fell below the gate's json-valid
    # and med-count floors (README, "Training throughput"). It changes the recipe's randomness, so it applies
    # on a GPU too.
    share_dropout_masks: bool = False
    # Under autocast, LoRA layers take their input as it comes (bf16) instead of peft's float32 copy
    # (train.trainer.lora_inputs_uncast): the same loss and gradients, fewer copies
    uncast_lora_inputs: bool = True
    gradient_checkpointing: bool = False  # saves GPU memory on large bases, costs ~30% speed
    adapter_dtype: Literal["float16", "float32"] = "float16"  # saved weights: float16 halves the file
    # After training, the saved adapter on NF4 and unquantised bases alike, its figures recorded in the
    # manifest (train/numerics_check.py). The validation loss alone costs about 50 s per numerics at 135M
    # on 2 cores, so the quick profile leaves it off; so should a run whose GPU cannot hold an
    # unquantised copy of its base.
    check_numerics: bool = False
    check_notes: int = 0  # held-out test notes generated under each numerics; 0: validation loss only
    seed: int = 0
    dataset_seed: int = 0  # the dataset generated when no --data is given
    train_records: int = 450
    val_records: int = 50

    def __post_init__(self):
        positive = ("rank", "alpha", "batch_size", "grad_accum", "eval_steps", "train_records", "val_records")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.check_notes < 0:
            raise ValueError(f"check_notes must be >= 0, got {self.check_notes}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.loraplus_ratio is not None and self.loraplus_ratio < 1:
            raise ValueError(f"loraplus_ratio must be >= 1, got {self.loraplus_ratio}")
        if self.precision not in get_args(Precision):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.split_quotes not in get_args(QuoteSplit):
            raise ValueError(f"split_quotes must be none, closers or all, got {self.split_quotes!r}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")

    def micro_batch(self, on_gpu: bool, processes: int = 1) -> tuple[int, int]:
        """(batch_size, grad_accum) each of `processes` data-parallel processes uses."""
        batch = self.batch_size or (2 if on_gpu else max(1, EFFECTIVE_BATCH // processes))
        return batch, self.grad_accum or max(1, EFFECTIVE_BATCH // (batch * processes))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out

    def override(self, **changes) -> TrainConfig:
        """A copy with `changes` applied; unknown names are an error, not silently ignored."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


PROFILES: dict[str, TrainConfig] = {
    # About 7 minutes on 2 CPU cores: enough to beat the base model clearly. LoRA on the MLP linears too:
    # nearly free per step (the backward pass runs through every MLP anyway), and after 24 steps validation
    # loss 0.224 against 0.317, schema valid 0.77 against 0.00 on 30 test notes. 48 steps, not 24, since
    # the training notes' concepts are half invented: 24 steps learn to copy medications but not yet to
    # close the lists around them (README, "The quick profile").
    # Closing quotes split, and the opening quotes of name and gender, which may be null: 48 steps with every
    # opener split scored json valid 0.82 against 0.98 on all 119 scenarios (one run each), but those two
    # alone, over seeds 0 to 4: wrong names 12 against 40 and wrong genders 35 against 54 on average, fewer
    # invented values on every seed (88 against 109), field F1 0.718 against 0.695 (higher on 4 seeds of 5),
    # json valid 0.891 against 0.928 and med count 0.606 against 0.655 (README, "The quick profile").
    # No LoRA dropout: 48 steps see each example once at most, so there is nothing to overfit yet, and the
    # masks cost 10 to 15 % of a step. Seeds 0 and 1, all 119 scenarios: field F1 0.708 and 0.687 against
    # 0.694 and 0.686 with dropout 0.05, the same validation loss (README, "The quick profile").
    "quick": TrainConfig(profile="quick", learning_rate=1e-3, max_steps=48, eval_steps=24, warmup_steps=3,
                         target_modules=ATTENTION + MLP, split_quotes="nullable", dropout=0.0),
    # The reference adapter's recipe: 3 epochs, validation and a checkpoint after each (57 steps of 8), LoRA on
    # the MLP linears as well, the note cut at its spaces (README, "The reference adapter").
    "full": TrainConfig(profile="full", learning_rate=1e-3, epochs=3.0, eval_steps=57, warmup_steps=5,
                        target_modules=ATTENTION + MLP, split_note_spaces=True, check_numerics=True,
                        check_notes=30),
}


def profile(name: str) -> TrainConfig:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None

