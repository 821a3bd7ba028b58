"""Training: loss masking, configuration, and (slow) real QLoRA runs that lower the loss and resume."""

import json

import pytest

from harness.models import resolve_base
from train.config import PROFILES, TrainConfig, profile
from train.trainer import IGNORE, PadCollator, encode_example


def test_profiles_and_overrides_validate():
    assert profile("quick").max_steps > 0 and set(PROFILES) == {"quick", "full"}
    assert TrainConfig().override(rank=8).rank == 8
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig().override(lr=1)
    with pytest.raises(ValueError, match="rank"):
        TrainConfig(rank=0)
    with pytest.raises(ValueError, match="unknown profile"):
        profile("huge")


def test_study_defaults():
    c = TrainConfig()
    assert (c.rank, c.alpha, c.dropout, c.batch_size, c.grad_accum, c.eval_steps) == (16, 32, 0.05, 2, 4, 50)
    assert c.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj") and c.quantization == "nf4"


def test_collator_pads_right_and_ignores_padding():
    batch = PadCollator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                                   {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base("embedded").folder)


@pytest.mark.slow
def test_loss_only_on_the_answer(tokenizer):
    """The note, system prompt and chat headers are masked; the answer and its end token are learned."""
    note, answer = "Pt John Doe, 55y, history of T2DM.", '{"resourceType":"SunriseEMRClinicalSummary"}'
    ex = encode_example(tokenizer, note, answer)
    learned = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE]
    masked = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab == IGNORE]
    assert tokenizer.decode(learned) == answer + "<|im_end|>"
    assert note in tokenizer.decode(masked) and "SunriseEMRClinicalSummary" not in tokenizer.decode(masked)
    assert ex["labels"][: len(masked)] == [IGNORE] * len(masked)  # the mask is a prefix


TINY = dict(train_records=16, val_records=4, batch_size=2, grad_accum=1, warmup_steps=0, learning_rate=2e-3)


@pytest.mark.slow
def test_short_real_training_lowers_the_loss_and_writes_every_output(tmp_path):
    from train import train

    out = tmp_path / "run"
    manifest = train(profile("quick").override(max_steps=8, eval_steps=4, **TINY), out)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train_losses = [r["train_loss"] for r in log if "train_loss" in r]
    val_losses = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(train_losses) == 8 and len(val_losses) == 2
    assert sum(train_losses[-2:]) / 2 < sum(train_losses[:2]) / 2  # the loss fell
    for name in ("adapter_model.safetensors", "adapter_config.json", "loss_curve.png", "manifest.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "SmolLM2-135M-Instruct" and config["r"] == 16
    assert manifest["hyperparameters"]["rank"] == 16 and manifest["dataset"]["train"] == 16
    assert manifest["base_model"]["weights_sha256"] and len(manifest["adapter_sha256"]) == 64
    assert manifest["final_val_loss"] == val_losses[-1] and manifest["versions"]["torch"]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path):
    from transformers import TrainerCallback

    from train import train

    class CtrlC(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    config = profile("quick").override(max_steps=4, eval_steps=2, **TINY)
    with pytest.raises(KeyboardInterrupt):
        train(config, out, callbacks=(CtrlC(),))
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "manifest.json").exists()
    manifest = train(config, out)
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
             if "train_loss" in line]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 after resuming: nothing redone
    assert manifest["steps"] == 4
