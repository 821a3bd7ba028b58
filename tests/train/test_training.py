"""Training: loss masking, configuration, and (slow) real QLoRA runs that lower the loss and resume."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from scenarios.splits import GENERATOR_VERSION, SplitSizes
from train.config import ATTENTION, MLP, PROFILES, TrainConfig, profile
from train.dataset import dataset_hash, write_dataset
from train.trainer import IGNORE, PadCollator, _attention, encode_example, how_to_remake


def test_profiles_and_overrides_validate():
    assert profile("quick").max_steps > 0 and set(PROFILES) == {"quick", "full"}
    assert TrainConfig().override(rank=8).rank == 8
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig().override(lr=1)
    with pytest.raises(ValueError, match="rank"):
        TrainConfig(rank=0)
    with pytest.raises(ValueError, match="unknown profile"):
        profile("huge")
    with pytest.raises(ValueError, match="check_notes"):
        TrainConfig(check_notes=-1)
    with pytest.raises(ValueError, match="split_quotes"):
        TrainConfig(split_quotes="openers")
    # The reference recipe ends with the numerics check; the main job's quick profile does not pay for it.
    assert profile("full").check_numerics and profile("full").check_notes > 0 and not profile("quick").check_numerics
    # Every opener split pays off over the full profile's steps; the quick profile's 48 gain from those of
    # the values that may be null only (README).
    assert (profile("full").split_quotes, profile("quick").split_quotes) == ("all", "nullable")
    # The reference recipe reads notes cut at their spaces; the quick profile's 48 steps gain nothing from it.
    assert profile("full").split_note_spaces and not profile("quick").split_note_spaces
    # Both profiles add the MLP linears to the study's attention-only LoRA (the library default, below).
    assert profile("full").target_modules == profile("quick").target_modules == ATTENTION + MLP
    # The full profile keeps the study's LoRA dropout; the quick one's 48 steps go faster without it.
    assert (profile("full").dropout, profile("quick").dropout) == (0.05, 0.0)


def test_study_defaults():
    c = TrainConfig()
    assert (c.rank, c.alpha, c.dropout, c.eval_steps) == (16, 32, 0.05, 50)
    # The study's 2 x 4 on a GPU (a VRAM limit); one micro-batch of 8 on a CPU; an override keeps 8 in all.
    assert c.micro_batch(on_gpu=True) == (2, 4) and c.micro_batch(on_gpu=False) == (8, 1)
    assert c.override(batch_size=4).micro_batch(on_gpu=False) == (4, 2)
    assert c.override(batch_size=2, grad_accum=1).micro_batch(on_gpu=True) == (2, 1)
    # Data parallel keeps the effective batch of 8: two CPU processes of 4, two GPUs of 2 x 2.
    assert c.micro_batch(on_gpu=False, processes=2) == (4, 1) and c.micro_batch(on_gpu=True, processes=2) == (2, 2)
    assert c.override(batch_size=8).micro_batch(on_gpu=False, processes=2) == (8, 1)  # an explicit size stays
    assert c.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj") and c.quantization == "nf4"


def test_eager_attention_only_where_it_pays_a_cpu_in_bf16():
    full = profile("full")
    assert _attention(full, "bf16") == "eager"  # torch's CPU flash-attention kernel is slow in bf16
    assert _attention(full, "fp32") is None  # transformers' default (SDPA): eager gained nothing there
    assert _attention(full.override(attn_implementation="sdpa"), "bf16") == "sdpa"  # an explicit choice stays


def test_how_to_remake_names_the_dataset_and_the_launch():
    generated = {"generator_version": 2, "seed": 3, "sizes": {"train": 450, "val": 50, "test": 100}}
    one = how_to_remake("full", 1, generated)
    assert one.startswith("sunrise dataset --out DATA --seed 3 --train 450 --val 50 --test 100 (generator version 2) "
                          "&& sunrise train --profile full --data DATA")
    # Two processes see other data each step than one: a remake launches as many.
    assert "&& torchrun --nproc_per_node 2 -m harness.cli train --profile full" in how_to_remake("full", 2, generated)
    assert how_to_remake("quick", 1, None).startswith("the data whose sha256 is below as DATA, then sunrise train")


def test_a_failed_numerics_check_is_recorded_not_raised(tmp_path, capsys):
    """The check runs after the adapter and its manifest are written; its failure must not lose them."""
    from train.trainer import _numerics_check

    result = _numerics_check(tmp_path / "no-adapter-here", TrainConfig(check_numerics=True), val_cases=[])
    assert set(result) == {"error"} and "no-adapter-here" in result["error"]
    assert "numerics check failed, recorded in the manifest" in capsys.readouterr().err


def test_collator_pads_right_and_ignores_padding():
    batch = PadCollator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                                   {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_answer_only_logits_give_the_same_loss():
    """The LM head cut to the answer positions changes the compute, not the loss or its gradient."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [IGNORE, IGNORE, IGNORE, IGNORE, 9, 10]},
            {"input_ids": [1, 2, 3, 4], "labels": [IGNORE, IGNORE, 3, 4]}]
    cut = PadCollator(pad_id=0, answer_logits=True)(rows)
    # from the position before token 3 of row 2, as indices (a contiguous gather, not a strided slice)
    assert cut["logits_to_keep"].tolist() == [1, 2, 3, 4, 5] and cut["labels"].shape == (2, 5)
    losses, grads = [], []
    for batch in (PadCollator(pad_id=0)(rows), cut):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("items", [None, 5], ids=["mean", "num-items"])
def test_fused_head_gives_transformers_loss_and_gradient(monkeypatch, autocast, items):
    """The LM head and cross-entropy over chunks of labelled positions (train/head_loss.py): the loss and
    the LoRA gradient of transformers' own head and loss, in several chunks, with the Trainer's
    num_items_in_batch or without; under no_grad (validation) only the loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from train import head_loss

    monkeypatch.setattr(head_loss, "CHUNK_VALUES", 3 * 40)  # chunks of 3 rows
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [IGNORE, IGNORE, IGNORE, 8, 9, 10, 11]},
            {"input_ids": [1, 2, 3, 4], "labels": [IGNORE, IGNORE, 3, 4]}]
    batch = PadCollator(pad_id=0, answer_logits=True)(rows)
    kwargs = {} if items is None else {"num_items_in_batch": torch.tensor(items)}
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                            num_hidden_layers=2, num_attention_heads=2,
                                                            num_key_value_heads=1, tie_word_embeddings=True)),
                               LoraConfig(r=4, target_modules=list(ATTENTION), init_lora_weights=False,
                                          task_type="CAUSAL_LM"))
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
        if fused:
            head_loss.fuse_head_and_loss(model.get_base_model())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch, **kwargs).loss
            with torch.no_grad():
                held_out = model(**batch, **kwargs).loss
        loss.backward()
        grad = next(p.grad for n, p in model.named_parameters() if "layers.0" in n and "lora_A" in n)
        results.append((loss.item(), held_out.item(), grad.clone()))
    (loss, held_out, grad), (fused_loss, fused_held_out, fused_grad) = results
    assert fused_loss == pytest.approx(loss, rel=1e-6) and fused_held_out == pytest.approx(held_out, rel=1e-6)
    tolerance = 2e-2 if autocast else 1e-5  # bf16: the gradient's products round in another order
    assert torch.allclose(fused_grad, grad, rtol=tolerance, atol=tolerance * grad.abs().max().item())


def test_lora_inputs_stay_bf16_under_cpu_autocast_with_the_same_loss_and_gradient():
    """peft copied every LoRA input to float32 under a CPU's autocast (train.trainer.lora_inputs_uncast):
    without those copies the loss and the LoRA gradients are the same bit for bit, dropout included."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.dropout import use_bits_dropout
    from train.trainer import lora_inputs_uncast

    hidden = 16

    class FloatCopies(TorchDispatchMode):
        """Counts copies of activations (hidden wide) into float32."""

        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if (func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.float32
                    and args[0].dim() == 3 and args[0].shape[-1] == hidden):
                self.count += 1
            return func(*args, **kwargs)

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=hidden, intermediate_size=32,
                                                        num_hidden_layers=2, num_attention_heads=2,
                                                        num_key_value_heads=1)).to(torch.bfloat16),
                           LoraConfig(r=4, lora_dropout=0.3, target_modules=list(ATTENTION), init_lora_weights=False,
                                      task_type="CAUSAL_LM"))
    use_bits_dropout(model)
    batch = {"input_ids": torch.arange(2, 26).reshape(2, 12), "labels": torch.arange(2, 26).reshape(2, 12)}
    results = []
    for uncast in (False, True):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        copies = FloatCopies()
        with lora_inputs_uncast(model, active=uncast), torch.autocast("cpu", dtype=torch.bfloat16), copies:
            loss = model(**batch).loss
            loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        results.append((loss.item(), grads, copies.count))
    (loss, grads, copies), (uncast_loss, uncast_grads, uncast_copies) = results
    # One copy per adapted linear in the forward pass (q, k, v, o in 2 layers) and their gradients went;
    # RMSNorm's own float32 stays.
    assert copies - uncast_copies >= 2 * 4
    assert uncast_loss == loss and torch.equal(uncast_grads, grads)


def test_fused_head_refuses_a_trainable_head():
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.head_loss import fuse_head_and_loss

    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="frozen LM head"):
        fuse_head_and_loss(model)


def test_loraplus_gives_the_b_matrices_their_own_learning_rate():
    """LoRA+ (a measured lever, off in both profiles): B learns `loraplus_ratio` times as fast as A."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.trainer import _optimizer

    with pytest.raises(ValueError, match="loraplus_ratio"):
        TrainConfig(loraplus_ratio=0.5)
    assert profile("quick").loraplus_ratio is None and profile("full").loraplus_ratio is None
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                        num_hidden_layers=1, num_attention_heads=2,
                                                        num_key_value_heads=1)),
                           LoraConfig(r=4, target_modules=list(ATTENTION), task_type="CAUSAL_LM"))
    assert _optimizer(model, TrainConfig()) is None  # the Trainer's own AdamW
    groups = _optimizer(model, TrainConfig(learning_rate=1e-3, loraplus_ratio=4)).param_groups
    rates = {p.data_ptr(): g["lr"] for g in groups for p in g["params"]}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert rates[param.data_ptr()] == pytest.approx(4e-3 if "lora_B" in name else 1e-3), name


@pytest.mark.slow
def test_loss_only_on_the_answer(tokenizer):
    """The note, system prompt and chat headers are masked; the answer and its end token are learned."""
    note, answer = "Pt John Doe, 55y, history of T2DM.", '{"patient":{"name":"John Doe"}}'
    ex = encode_example(tokenizer, note, answer)
    learned = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE]
    masked = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab == IGNORE]
    assert tokenizer.decode(learned) == answer + "<|im_end|>"
    assert note in tokenizer.decode(masked) and '"patient"' not in tokenizer.decode(masked)
    assert ex["labels"][: len(masked)] == [IGNORE] * len(masked)  # the mask is a prefix


@pytest.mark.slow
def test_split_quotes_keep_the_text_and_give_each_deciding_quote_its_own_token(tokenizer):
    note = "Mary Walker, asthma and heartburn. On Salbutamol 100 mcg, Allopurinol and Omeprazole 20mg."
    answer = ('{"patient":{"name":"Mary Walker","gender":null},"reasonCode":[{"text":"asthma"},{"text":"heartburn"}],'
              '"medicationStatement":[{"medication":"Salbutamol","dose":{"value":100,"unit":"mcg"}},'
              '{"medication":"Allopurinol","dose":null},{"medication":"Omeprazole","dose":{"value":20,"unit":"mg"}}]}')

    def pieces(split):
        ex = encode_example(tokenizer, note, answer, split_quotes=split)
        return [tokenizer.decode([t]) for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE]

    def closers(tokens):
        return [p for p in tokens if '"}' in p or '"]' in p]

    def openers(tokens):
        return [p for p in tokens if ':"' in p]

    def after(tokens, key):
        return tokens[tokens.index(key) + 1:][:2]

    bpe = pieces("none")
    assert closers(bpe) and openers(bpe)  # BPE's own tokenisation merges both kinds of quote
    for split in ("closers", "all", "nullable"):
        assert "".join(pieces(split)) == answer + "<|im_end|>"
        assert not closers(pieces(split))
    assert openers(pieces("closers"))
    assert not openers(pieces("all"))
    # Every key now ends in the same '":' token, before null and before a string alike.
    keys = [t for t in pieces("all") if t.endswith(":")]
    assert set(keys) == {'":'} and len(keys) == answer.count('":')
    # "nullable": only the keys whose value may be null (name, gender) end so; the others keep BPE's merges.
    nullable = pieces("nullable")
    assert openers(nullable) == openers(pieces("closers"))[1:]  # the name's '":"' was the first
    assert after(nullable, "name") == ['":', '"'] and after(nullable, "gender") == ['":', "null"]
    assert after(pieces("closers"), "name") == ['":"', "Mary"]


@pytest.mark.slow
def test_split_note_spaces_keep_the_text_and_put_a_values_first_word_in_the_note_as_answers_write_it(tokenizer):
    note = "Pt Mary Walker, c/o vomiting and rash on arms. On Salbutamol 100 mcg."
    answer = '{"reasonCode":[{"text":"vomiting"},{"text":"rash on arms"}]}'

    def split(ex, learned):
        return [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if (lab != IGNORE) == learned]

    plain, cut = (encode_example(tokenizer, note, answer, "all", spaces) for spaces in (False, True))
    assert tokenizer.decode(split(cut, False)) == tokenizer.decode(split(plain, False))  # the same text
    assert split(cut, True) == split(plain, True)  # and the same answer tokens
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    assert len(space) == 1 and split(cut, False).count(space[0]) == note.count(" ")
    # BPE writes ' vomiting' in the note but 'v' 'om' 'iting' after the answer's quote; cut, the note has those.
    first = tokenizer("vomiting", add_special_tokens=False)["input_ids"]

    def holds(ids):
        return any(ids[i:i + len(first)] == first for i in range(len(ids)))

    assert len(first) > 1 and holds(split(cut, False)) and not holds(split(plain, False))


def _sunrise(*args, **kwargs) -> subprocess.Popen:
    """Training runs in its own process, as users run it (and as bitsandbytes' CPU state expects)."""
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("tiny")
    write_dataset(data, SplitSizes(train=16, val=4, test=0))
    return data


def _train_args(data, out, steps, eval_steps):
    return ["train", "--profile", "quick", "--data", data, "--out", out, "--max-steps", steps,
            "--eval-steps", eval_steps, "--batch-size", 2, "--grad-accum", 1, "--learning-rate", 2e-3]


@pytest.mark.slow
def test_short_real_training_lowers_the_loss_and_writes_every_output(tmp_path, tiny_data):
    out = tmp_path / "run"
    proc = _sunrise(*_train_args(tiny_data, out, 8, 4), "--numerics-check")
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-3000:]
    assert re.search(r"trained 8 steps in \d+ s \(\d+ tokens/s\): train loss \d\.\d{4}, validation loss \d\.\d{4}",
                     output)  # the summary, after the progress bar, in words
    # The Trainer's logs reach the user on our bar (loss, validation loss, tokens/s), never as raw dicts.
    assert "training: 100%" in output and "val loss=" in output and "tokens/s=" in output
    assert "{'loss'" not in output and "'eval_loss'" not in output and "{'train_runtime'" not in output
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train_losses = [r["train_loss"] for r in log if "train_loss" in r]
    val_losses = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(train_losses) == 8 and len(val_losses) == 2
    assert sum(train_losses[-2:]) / 2 < sum(train_losses[:2]) / 2  # the loss fell
    for name in ("adapter_model.safetensors", "adapter_config.json", "loss_curve.png", "manifest.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists() and not (out / "README.md").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "SmolLM2-135M-Instruct" and config["r"] == 16
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hyperparameters"]["rank"] == 16 and manifest["dataset"]["train"] == 16
    assert manifest["hyperparameters"]["processes"] == 1  # with micro_batch_used, the effective batch
    assert manifest["hyperparameters"]["bits_dropout_used"]  # on a CPU
    used = manifest["hyperparameters"]
    assert used["attn_implementation_used"] == ("eager" if used["precision_used"] == "bf16" else "sdpa")
    assert manifest["dataset"]["sha256"] == dataset_hash(tiny_data)
    assert manifest["dataset"]["generated"]["generator_version"] == GENERATOR_VERSION
    assert manifest["how_to_remake"].startswith("sunrise dataset --out DATA --seed 0 --train 16 --val 4 --test 0 ")
    assert manifest["base_model"]["weights_sha256"] and len(manifest["adapter_sha256"]) == 64
    assert manifest["final_val_loss"] == val_losses[-1] and manifest["versions"]["torch"]
    assert manifest["matmul_bound_gflops"] > 0 and 0 < manifest["fraction_of_bound"] < 1
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved adapter, loaded as the harness serves it, on both bases: validation loss only (no --check-notes).
    check = manifest["numerics_check"]
    assert set(check["numerics"]) == {"nf4", "none"} and check["test_notes"] == 0 and "holds" not in check
    assert all(0 < row["val_loss"] < 10 for row in check["numerics"].values())
    assert "numerics check:" in output


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_data):
    """A kill loses at most one evaluation interval: rerunning the command resumes from the checkpoint."""
    out = tmp_path / "run"
    # With shared dropout masks and notes cut at their spaces (options, off by default), so that their
    # paths run here too.
    args = [*_train_args(tiny_data, out, 6, 2), "--share-dropout-masks", "--split-note-spaces"]
    proc = _sunrise(*args)
    deadline = time.monotonic() + 600
    while not (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.5)
    time.sleep(1.0)  # let it get into step 3
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / "manifest.json").exists()
    resumed = _sunrise(*args)
    output = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, output[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
             if "train_loss" in line]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing lost before the checkpoint, nothing logged twice
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 6 and manifest["hyperparameters"]["share_dropout_masks"] is True
    assert manifest["hyperparameters"]["split_note_spaces"] is True
