"""Model specs, base resolution and adapter checks (fast), and the real embedded model (slow)."""

import json
import time

import pytest

from harness.errors import AdapterError, ModelNotFoundError
from harness.models import (
    GenerationSettings,
    HFBackend,
    ModelSpec,
    ResolvedBase,
    check_adapter_base,
    inspect_adapter,
    resolve_base,
)
from harness.settings import REFERENCE_ADAPTER
from scenarios import SEED


def test_spec_validates_where_it_enters():
    with pytest.raises(ValueError, match="quantization"):
        ModelSpec(quantization="int3")
    with pytest.raises(ValueError, match="merge_adapter"):
        ModelSpec(merge_adapter="yes")
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)


def test_missing_model_folder_and_gguf_say_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_base(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_base(str(tmp_path / "x.gguf"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_base(str(tmp_path / "empty"), tmp_path)


def test_unknown_hub_id_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="Qwen/Qwen2.5-3B-Instruct.*not found.*--base-model"):
        resolve_base("Qwen/Qwen2.5-3B-Instruct", tmp_path)
    assert time.perf_counter() - t0 < 10


def _adapter(tmp_path, base="SmolLM2-135M-Instruct", weights="adapter_model.safetensors"):
    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    (folder / weights).write_bytes(b"\0" * 16)
    return folder


def test_pickled_adapter_is_refused(tmp_path):
    with pytest.raises(AdapterError, match="pickled adapter_model.bin"):
        inspect_adapter(_adapter(tmp_path, weights="adapter_model.bin"))


def test_adapter_without_config_or_weights(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        inspect_adapter(tmp_path / "missing")
    folder = _adapter(tmp_path)
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="unreadable"):
        inspect_adapter(folder)


def test_an_adapters_manifest_says_how_it_reads_notes(tmp_path):
    """`sunrise train --split-note-spaces` records it in the manifest beside the adapter; an adapter
    trained elsewhere has none and reads notes as BPE cuts them."""
    folder = _adapter(tmp_path)
    assert not inspect_adapter(folder).split_note_spaces
    (folder / "manifest.json").write_text(json.dumps({"adapter_sha256": "0" * 64}))  # says nothing of it
    assert not inspect_adapter(folder).split_note_spaces
    (folder / "manifest.json").write_text(json.dumps({"hyperparameters": {"split_note_spaces": True}}))
    assert inspect_adapter(folder).split_note_spaces
    for broken in ("{not json", "[]", '{"hyperparameters": [true]}'):
        (folder / "manifest.json").write_text(broken)
        with pytest.raises(AdapterError, match="manifest.json is unreadable"):
            inspect_adapter(folder)


def test_an_adapters_manifest_says_how_its_answers_were_tokenised(tmp_path):
    """The numerics check's validation loss tokenises answers as training did: the manifest's
    split_quotes, split_closers for adapters trained before it, BPE's own without a manifest."""
    assert inspect_adapter(REFERENCE_ADAPTER).split_quotes == "all"
    folder = _adapter(tmp_path)
    assert inspect_adapter(folder).split_quotes == "none"
    legacy = {"split_closers": True}
    for hyper, expected in ((legacy, "closers"), ({"split_quotes": "closers"}, "closers"), ({}, "none")):
        (folder / "manifest.json").write_text(json.dumps({"hyperparameters": hyper}))
        assert inspect_adapter(folder).split_quotes == expected


def test_adapter_base_mismatch_is_an_error(tmp_path):
    info = inspect_adapter(_adapter(tmp_path, base="Qwen/Qwen2.5-3B-Instruct"))
    with pytest.raises(AdapterError, match="trained on 'Qwen/Qwen2.5-3B-Instruct'.*SmolLM2"):
        check_adapter_base(info, ResolvedBase("SmolLM2-135M-Instruct", "/x/SmolLM2", "0"))
    check_adapter_base(info, ResolvedBase("Qwen2.5-3B-Instruct", "/models/Qwen2.5-3B-Instruct", "0"))


# ----------------------------------------------------------------------------- the real embedded model

@pytest.fixture(scope="module")
def base_fp32():
    return HFBackend(ModelSpec(quantization="none"))


@pytest.mark.slow
def test_embedded_gguf_converts_once_and_loads_fast(base_fp32):
    folder = base_fp32.resolved.folder
    assert base_fp32.resolved.name == "SmolLM2-135M-Instruct"
    assert sum(p.numel() for p in base_fp32.model.parameters()) == 134_515_008
    t0 = time.perf_counter()
    again = resolve_base("embedded")
    assert again.folder == folder and time.perf_counter() - t0 < 2  # cached: no second conversion


@pytest.mark.slow
def test_local_folder_loads_like_the_embedded_model(base_fp32):
    folder_backend = HFBackend(ModelSpec(base=base_fp32.resolved.folder, quantization="none"))
    note = SEED[0].note
    settings = GenerationSettings(max_new_tokens=12)
    assert folder_backend.generate([note], settings)[0].text == base_fp32.generate([note], settings)[0].text


@pytest.mark.slow
def test_greedy_generation_is_deterministic_and_batch_invariant(base_fp32):
    notes = [c.note for c in SEED]
    settings = GenerationSettings(max_new_tokens=24)
    one_by_one = [base_fp32.generate([n], settings)[0].text for n in notes]
    batched = [g.text for g in base_fp32.generate(notes, GenerationSettings(max_new_tokens=24, batch_size=5))]
    assert batched == one_by_one


@pytest.mark.slow
def test_base_model_fails_the_schema_the_way_the_project_expects(base_fp32):
    from harness.scoring import score_case

    out = base_fp32.generate([SEED[0].note], GenerationSettings())[0]
    assert not score_case(out.text, SEED[0].expected).schema_valid


@pytest.mark.slow
def test_prompted_role_on_the_embedded_model(base_fp32):
    """The prompted role's path on the real model: the engineered prompt (schema, rules, examples)
    reaches it, each answer keeps the per-note bound (counted from the note, not the long prompt),
    and the 135M model zero-shot still does not write schema v1, the study's starting point."""
    from harness.scoring import score_case

    settings = GenerationSettings(prompt="engineered")
    outs = base_fp32.generate([c.note for c in SEED], settings)
    for case, out in zip(SEED, outs, strict=True):
        assert out.prompt_tokens > base_fp32.template_tokens("trained") + 500
        assert out.new_tokens <= base_fp32.answer_limit(case.note, settings) < 400
        assert not score_case(out.text, case.expected, case.note).schema_valid, out.text


@pytest.mark.slow
def test_loop_is_bounded_by_max_new_tokens(base_fp32):
    out = base_fp32.generate(["Repeat the word 'bed' forever."], GenerationSettings(max_new_tokens=16))[0]
    assert out.new_tokens <= 16


@pytest.mark.slow
def test_over_long_note_is_refused_clearly(base_fp32):
    from harness.errors import InputError

    with pytest.raises(InputError, match="too long"):
        base_fp32.generate(["fever " * 9000], GenerationSettings())


@pytest.mark.slow
def test_nf4_with_reference_adapter_extracts_seed_notes():
    tuned = HFBackend(ModelSpec(quantization="nf4", adapter=str(REFERENCE_ADAPTER)))
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in tuned.model.modules())
    assert tuned.identity["adapter_sha256"] and tuned.identity["quantization"] == "nf4"
    from harness.schema import validate_text

    outs = tuned.generate([c.note for c in SEED], GenerationSettings())
    assert sum(validate_text(o.text) == [] for o in outs) >= 4


@pytest.mark.slow
def test_an_adapter_trained_on_notes_cut_at_their_spaces_is_read_so():
    """Generation encodes the note as the adapter's training did (its manifest says how), and the
    identity, so the cache key, says which way it was read."""
    from harness.schema import dumps
    from train.trainer import IGNORE, encode_example

    cut = HFBackend(ModelSpec(quantization="nf4", adapter=str(REFERENCE_ADAPTER)))
    assert cut.identity["note_tokens"] == "split at spaces"
    note = SEED[0].note
    example = encode_example(cut.tokenizer, note, dumps(SEED[0].expected), "all", split_note_spaces=True)
    as_trained = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label == IGNORE]
    assert cut.encode([note])[0] == as_trained
    plain = HFBackend.from_model(cut.tokenizer, cut.model, {k: v for k, v in cut.identity.items()
                                                            if k != "note_tokens"})
    bpe = plain.encode([note])[0]
    assert bpe != as_trained and cut.tokenizer.decode(bpe) == cut.tokenizer.decode(as_trained)
    answer = cut.generate([note], GenerationSettings(max_new_tokens=8))[0]
    assert answer.error is None and answer.prompt_tokens == len(as_trained)


@pytest.mark.slow
def test_nf4_outputs_do_not_depend_on_the_batch(adapter_copy):
    """The same note gives the same output alone and inside different batches (NF4, the evaluation's
    default): notes of different lengths, so batches pad, in two different compositions."""
    from scenarios.splits import generate_split

    tuned = HFBackend(ModelSpec(quantization="nf4", adapter=str(adapter_copy)))
    assert tuned.identity["numerics"] == "batch-invariant"
    notes = [c.note for c in generate_split("test", 8)]
    settings = GenerationSettings(max_new_tokens=48)
    together = [g.text for g in tuned.generate(notes, settings)]
    pairs = tuned.generate(notes[::-1], GenerationSettings(max_new_tokens=48, batch_size=3))[::-1]
    alone = [tuned.generate([n], settings)[0].text for n in notes[:3]]
    assert [g.text for g in pairs] == together and alone == together[:3]
    assert len({len(tuned.encode([n])[0]) for n in notes}) > 4  # the batches really were padded


@pytest.mark.slow
def test_nf4_on_any_cpu_computes_as_training_does(adapter_copy, monkeypatch):
    """NF4 generation on a CPU runs in float32 on weights dequantised once, on a CPU with avx512_bf16
    (where bitsandbytes would repack the weights for its fused bfloat16 kernel) and without: the same
    bits as bitsandbytes' own dequantise-per-call path (what a machine too small for the dense copies
    keeps), so one identity, cache key and output."""
    import bitsandbytes as bnb
    import torch

    from harness import models
    from harness.cache import cache_key
    from harness.numerics import dequantise_once

    # The dequantised path against bitsandbytes' own, as they are: not the invariant products a CPU whose
    # MKL sums depend on the shape takes on top of it (harness.numerics.invariant_products)
    monkeypatch.setattr(models, "invariant_products", lambda model: None)
    here = HFBackend(ModelSpec(quantization="nf4", adapter=str(adapter_copy)))
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: False)  # a CPU without avx512_bf16
    monkeypatch.setattr(models, "dequantise_once", lambda model: dequantise_once(model, memory_share=0))
    without = HFBackend(ModelSpec(quantization="nf4", adapter=str(adapter_copy)))  # dequantising per call
    assert not any(hasattr(m, "dense_weight") for m in without.model.modules())
    settings = GenerationSettings(max_new_tokens=8)
    outputs = [[g.text for g in b.generate([SEED[0].note], settings)] for b in (here, without)]
    assert outputs[0] == outputs[1]
    assert here.identity["nf4_kernel"] == without.identity["nf4_kernel"] == "cpu-fp32-dequantised"
    assert len({cache_key(b.identity, SEED[0].note, settings.to_dict(), "v") for b in (here, without)}) == 1
    layers = [m for m in here.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 7 * here.model.config.num_hidden_layers
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers[:7]:  # q, k, v, o, gate, up, down: every shape
            assert hasattr(layer, "dense_weight")
            x = torch.randn(3, 5, layer.in_features, generator=gen)
            assert torch.equal(layer(x), bnb.nn.Linear4bit.forward(layer, x))  # bitsandbytes' own path


@pytest.mark.slow
def test_merged_adapter_matches_attached(adapter_copy):
    attached = HFBackend(ModelSpec(quantization="none", adapter=str(adapter_copy)))
    merged = HFBackend(ModelSpec(quantization="none", adapter=str(adapter_copy), merge_adapter=True))
    notes = [c.note for c in SEED[:2]]
    settings = GenerationSettings(max_new_tokens=40)
    assert [g.text for g in merged.generate(notes, settings)] == [g.text for g in attached.generate(notes, settings)]


@pytest.mark.slow
def test_an_adapter_merged_into_nf4_weights_dequantised_once_answers_as_attached(adapter_copy, monkeypatch):
    """Under nf4 on a CPU, merging adds the adapter into the dense copies of the NF4 weights (never
    quantised again): the LoRA layers are gone, the answers the same, and the identity says merged.
    Where the weights are not dequantised once (a GPU, or no memory for the copies), it is a clear error,
    and "auto" (what the suite asks for) keeps the adapter attached, as the identity says."""
    from peft.tuners.lora import LoraLayer

    from harness import models
    from harness.numerics import dequantise_once

    attached = HFBackend(ModelSpec(quantization="nf4", adapter=str(adapter_copy)))
    merged = HFBackend(ModelSpec(quantization="nf4", adapter=str(adapter_copy), merge_adapter=True))
    assert not any(isinstance(m, LoraLayer) for m in merged.model.modules())
    assert merged.identity["merged"] and not attached.identity["merged"]
    notes = [c.note for c in SEED]
    settings = GenerationSettings(max_new_tokens=64)
    assert [g.text for g in merged.generate(notes, settings)] == [g.text for g in attached.generate(notes, settings)]
    monkeypatch.setattr(models, "dequantise_once", lambda model: dequantise_once(model, memory_share=0))
    with pytest.raises(AdapterError, match="needs them dequantised once"):
        HFBackend(ModelSpec(quantization="nf4", adapter=str(adapter_copy), merge_adapter=True))
    kept = HFBackend(ModelSpec(quantization="nf4", adapter=str(adapter_copy), merge_adapter="auto"))
    assert any(isinstance(m, LoraLayer) for m in kept.model.modules()) and not kept.identity["merged"]
    same = {k: v for k, v in attached.identity.items() if k != "products"}
    if "products" in attached.identity:  # invariant products need the dense copies; without them, MKL's
        same["numerics"] = "batch-dependent"
    assert kept.identity == same


@pytest.mark.slow
def test_broken_adapter_weights_give_a_clear_error(adapter_copy):
    (adapter_copy / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="could not be attached"):
        HFBackend(ModelSpec(quantization="none", adapter=str(adapter_copy)))


@pytest.mark.slow
@pytest.mark.parametrize("decoding", ["schema", "grounded"])
def test_constrained_decoding_of_the_base_alone_unquantised_batched(base_fp32, decoding):
    """The base model cannot write the schema on its own; constrained, every answer is schema v1 in
    the training serialisation, grounded ones copy every value from their note, and a note's answer
    does not depend on the batch it shares (float32)."""
    from harness.grounding import ground_summary
    from harness.schema import dumps, is_valid
    from scenarios import CURATED

    # The seed notes and the first curated ones (numbers that are neither age nor dose): the base runs
    # every answer to its bound, so each note costs; the constraint itself is checked on every scenario
    # in test_grammar.py.
    notes = [c.note for c in (*SEED, *CURATED[:3])]
    settings = GenerationSettings(decoding=decoding, batch_size=8)
    outs = base_fp32.generate(notes, settings)
    for note, out in zip(notes, outs, strict=True):
        obj = json.loads(out.text)
        assert out.error is None and out.stopped and is_valid(obj) and dumps(obj) == out.text
        if decoding == "grounded":
            assert all(g.grounded for g in ground_summary(obj, note)), (note, out.text)
    # One alone: it runs to its bound one token at a time, as long as the whole batch took
    # (test_nf4_outputs_do_not_depend_on_the_batch checks batch invariance in more compositions).
    assert base_fp32.generate(notes[:1], GenerationSettings(decoding=decoding))[0].text == outs[0].text


@pytest.mark.slow
def test_reference_adapter_under_each_decoding_in_nf4():
    from harness.grounding import ground_summary
    from harness.schema import validate_text
    from harness.scoring import aggregate, score_case

    # Merged, as the suite runs it (attached, it serves extract and serve: test_cli, test_openai_api).
    tuned = HFBackend(ModelSpec(quantization="nf4", adapter=str(REFERENCE_ADAPTER), merge_adapter=True))
    notes = [c.note for c in SEED]
    f1 = {}
    for decoding in ("free", "schema", "grounded"):
        outs = tuned.generate(notes, GenerationSettings(decoding=decoding))
        f1[decoding] = aggregate([score_case(o.text, c.expected, c.note) for o, c in zip(outs, SEED, strict=True)])
        if decoding != "free":
            assert all(validate_text(o.text) == [] for o in outs)
        if decoding == "grounded":
            assert all(g.grounded for o, n in zip(outs, notes, strict=True)
                       for g in ground_summary(json.loads(o.text), n))
    # Measured: 0.884 (Codeine came out as the span "Rx", a second "gastroenteritis" as a drug).
    assert f1["grounded"].metrics()["field_f1"] >= 0.85 and f1["grounded"].metrics()["grounded"] == 1.0


@pytest.mark.slow
def test_constrained_answers_replayed_from_free_ones_are_what_decoding_writes(adapter_copy):
    """After a free run, a grounded answer the grammar allows whole is replayed, not decoded, and one
    it forbids somewhere is decoded on from its last allowed token; either way it is, note for note,
    the answer of a backend that never decoded freely. (Under `schema` this adapter's answers to
    these notes are all replayed whole: the same path, tested in test_grammar.py.)"""
    from scenarios.splits import generate_split

    notes = [c.note for c in (*SEED, *generate_split("test", 8))]
    settings = GenerationSettings(decoding="grounded")
    # Merged, as the suite runs an adapter (on the AMD EPYC: this test 104 s, against 133 s attached).
    spec = ModelSpec(quantization="nf4", adapter=str(adapter_copy), merge_adapter=True)
    after_free = HFBackend(spec)
    free = after_free.generate(notes, GenerationSettings())
    replayed = after_free.generate(notes, settings)
    fresh = HFBackend(spec).generate(notes, settings)
    assert [(g.text, g.stopped, g.error) for g in replayed] == [(g.text, g.stopped, g.error) for g in fresh]
    stats = after_free.constraint_stats
    whole = [g.new_tokens for g, f in zip(replayed, free, strict=True) if g.text == f.text and f.stopped]
    assert 0 < stats.replayed_rows == len(whole) < len(notes)
    assert stats.replayed_tokens > sum(whole)  # and some answers went on from a shared beginning
