"""`sunrise export`: an adapter merged into its base, loadable as a plain model folder."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from harness.errors import HarnessError
from harness.export import export_gguf, export_gguf_lora, export_merged
from harness.models import GenerationSettings, HFBackend, ModelSpec, resolve_base
from harness.nf4_grid import nf4_grid_weights
from harness.settings import REFERENCE_ADAPTER
from scenarios import SEED


def _sunrise(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_export_refuses_a_folder_that_exists_and_an_adapter_that_is_not_one(tmp_path, usual_adapter):
    (tmp_path / "taken").mkdir()
    taken = _sunrise("export", "--adapter", usual_adapter, "--out", tmp_path / "taken")
    assert taken.returncode == 2 and "already exists" in taken.stderr and "never overwrites" in taken.stderr
    missing = _sunrise("export", "--adapter", tmp_path / "nowhere", "--out", tmp_path / "new")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not (tmp_path / "new").exists()


def test_an_adapter_that_reads_notes_cut_at_their_spaces_is_not_exported(tmp_path):
    """Another engine would tokenize the note itself and read it otherwise than the adapter learned
    (the reference adapter is trained so; the tests below export a copy that says otherwise)."""
    refused = _sunrise("export", "--adapter", REFERENCE_ADAPTER, "--out", tmp_path / "out")
    assert refused.returncode == 2 and "notes cut at their spaces" in refused.stderr
    assert "sunrise serve" in refused.stderr and not (tmp_path / "out").exists()


def test_gguf_export_says_what_it_lacks_before_loading_anything(tmp_path, usual_adapter):
    no_converters = _sunrise("export", "--adapter", usual_adapter, "--out", tmp_path / "g", "--format", "gguf",
                             env={"SUNRISE_LLAMA_CPP_DIR": str(tmp_path / "empty")})
    assert no_converters.returncode == 2 and "converters are not at" in no_converters.stderr
    assert "scripts/setup.sh" in no_converters.stderr and not (tmp_path / "g").exists()
    wrong_option = _sunrise("export", "--adapter", usual_adapter, "--out", tmp_path / "g", "--format", "gguf-lora",
                            "--dtype", "bfloat16")
    assert wrong_option.returncode == 2 and "--gguf-type" in wrong_option.stderr and not (tmp_path / "g").exists()
    other_way = _sunrise("export", "--adapter", usual_adapter, "--out", tmp_path / "g", "--gguf-type", "q8_0")
    assert other_way.returncode == 2 and "--dtype" in other_way.stderr and not (tmp_path / "g").exists()


def _gguf_tensors(path) -> dict:
    import gguf

    return {t.name: t.data.astype("float32") for t in gguf.GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def gguf_exports(tmp_path_factory, usual_adapter):
    """The reference adapter, read as llama.cpp reads notes, as both GGUF forms (about a minute each),
    shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("gguf")
    return tmp_path, export_gguf(usual_adapter, tmp_path / "g"), export_gguf_lora(usual_adapter, tmp_path / "l")


@pytest.mark.slow
def test_gguf_exports_carry_the_adapter_on_the_weights_it_was_trained_on(gguf_exports, usual_adapter):
    """Both GGUF forms hold the NF4 grid, not the shipped Q4_1 weights, which the adapter does not survive:
    base.gguf is the grid, adapter.gguf is the adapter's own B·A, and model.gguf is the grid plus it."""
    import numpy as np
    from safetensors.numpy import load_file

    tmp_path, merged, lora = gguf_exports
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["model.gguf", "sunrise_export.json"]
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == ["adapter.gguf", "base.gguf", "sunrise_export.json"]
    assert merged["merged_into"] == "nf4 grid" and lora["base_weights"] == "nf4 grid"
    assert json.loads((tmp_path / "l" / "sunrise_export.json").read_text()) == lora
    assert lora["adapter"]["manifest"] == json.loads((usual_adapter / "manifest.json").read_text())
    assert not list(tmp_path.glob(".*.tmp"))

    model, base = _gguf_tensors(tmp_path / "g" / "model.gguf"), _gguf_tensors(tmp_path / "l" / "base.gguf")
    adapter = _gguf_tensors(tmp_path / "l" / "adapter.gguf")
    peft = load_file(usual_adapter / "adapter_model.safetensors")
    grid = nf4_grid_weights(ModelSpec(), resolve_base("embedded"))
    scale = json.loads((usual_adapter / "adapter_config.json").read_text())
    scale = scale["lora_alpha"] / scale["r"]
    for layer, hf, gg in ((0, "v_proj", "attn_v"), (29, "o_proj", "attn_output")):  # not q/k: llama.cpp permutes them
        name = f"blk.{layer}.{gg}.weight"
        prefix = f"base_model.model.model.layers.{layer}.self_attn.{hf}"
        delta = peft[f"{prefix}.lora_B.weight"].astype("float32") @ peft[f"{prefix}.lora_A.weight"].astype("float32")
        on_grid = grid[f"model.layers.{layer}.self_attn.{hf}.weight"].numpy()
        np.testing.assert_allclose(base[name], on_grid, atol=2e-3, rtol=1e-3)  # f16 of the grid
        np.testing.assert_allclose(adapter[f"{name}.lora_b"] @ adapter[f"{name}.lora_a"], delta, atol=1e-4, rtol=1e-2)
        np.testing.assert_allclose(model[name], on_grid + scale * delta, atol=2e-3, rtol=1e-3)
    assert not np.allclose(model[name], base[name], atol=1e-3)  # the adapter is in it


@pytest.mark.slow
def test_llama_cpp_serves_the_gguf_lora_and_the_harness_evaluates_it_over_http(gguf_exports, usual_adapter):
    """llama.cpp's own OpenAI-compatible server (llama-cpp-python, built by scripts/setup.sh) with the
    exported base.gguf and adapter.gguf, evaluated through the HTTP backend like any served model,
    greedy: every seed note gets the output the adapter gives in process on NF4, but where the two
    engines' arithmetic (GGUF's half-precision weights, torch's float32) meets a near tie: at most one
    note may part, and only where the in-process model puts the served continuation within 0.5 logits
    of its own (the reference adapter read the usual way, as here, parted on one note at 0.006 logits:
    " Dave" in process, "Dave" served). (llama-cpp-python's server is greedy only with repeat_penalty 1;
    its default, 1.1, changed 12 of 20 test notes.)"""
    from harness.openai_backend import HTTPOptions, OpenAIBackend, ServedModel
    from tests.fakes.servers import server_process

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (scripts/setup.sh builds it; it needs cmake and a C++ compiler)")
    tmp_path, _, lora = gguf_exports
    notes = [c.note for c in SEED]
    serve = [sys.executable, "-m", "llama_cpp.server", "--host", "127.0.0.1", "--port", "{port}",
             "--model", str(tmp_path / "l" / "base.gguf"), "--lora_path", str(tmp_path / "l" / "adapter.gguf"),
             "--model_alias", "tuned", "--n_ctx", "4096", "--n_threads", "2"]
    with server_process(serve, tmp_path / "llama_cpp.log") as url:
        served = OpenAIBackend(ServedModel("tuned", url, lora["adapter"]["sha256"]),
                               HTTPOptions(concurrency=1, extra_body={"repeat_penalty": 1}))
        over_http = served.generate(notes, GenerationSettings(decoding="free"))
    assert served.identity["served"]["id"] == "tuned" and served.identity["adapter_sha256"] == lora["adapter"]["sha256"]
    backend = HFBackend(ModelSpec(quantization="nf4", adapter=str(usual_adapter)))
    in_process = backend.generate(notes, GenerationSettings(decoding="free"))
    assert [g.error for g in over_http] == [None] * len(notes)
    parted = [(note, ours.text, theirs.text) for note, ours, theirs in zip(notes, in_process, over_http, strict=True)
              if ours.text != theirs.text]
    gaps = [_gap_where_they_part(backend, *part) for part in parted]
    assert len(parted) <= 1 and all(gap < 0.5 for gap in gaps), (parted, gaps)


def _gap_where_they_part(backend, note, ours, theirs):
    """How far, in logits, the in-process model puts the best token that goes `theirs`' way below its own
    greedy choice, at the step where its answer (`ours`, decoded again here token by token) parts from
    `theirs`."""
    import torch

    from harness.prompt import prompt_ids

    tokenizer, shared = backend.tokenizer, len(os.path.commonprefix([ours, theirs]))
    ids, text = prompt_ids(tokenizer, note), ""
    with torch.no_grad():
        while True:
            logits = backend.model(torch.tensor([ids])).logits[0, -1].float()
            choice = int(logits.argmax())
            piece = tokenizer.decode([choice])
            if len(text) + len(piece) > shared or not piece:
                break
            text, ids = text + piece, [*ids, choice]
    rest = theirs[len(text):]
    their_way = [i for i in range(len(tokenizer)) if (piece := tokenizer.decode([i])) and rest.startswith(piece)]
    return (logits[choice] - logits[their_way].max()).item()


@pytest.mark.slow
def test_merged_export_loads_as_a_plain_model_and_answers_as_the_adapter_on_nf4(tmp_path, usual_adapter):
    """A QLoRA adapter is merged into the NF4 weights it was trained on, so the plain merged model
    answers as the adapter does on NF4 (on the as-shipped weights it lost 0.11 F1, benchmarks/numerics.py)."""
    out = tmp_path / "merged"
    record = export_merged(usual_adapter, out)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert list(out.glob("*.safetensors")) and not list(out.glob("adapter_*"))  # no peft left in it
    assert "sunrise_float64" not in (out / "config.json").read_text()  # other engines know its attention
    saved = json.loads((out / "sunrise_export.json").read_text())
    assert saved == record and saved["adapter"]["trained_on"] == "nf4" and saved["merged_into"] == "nf4 grid"
    assert saved["adapter"]["manifest"] == json.loads((usual_adapter / "manifest.json").read_text())
    assert not list(tmp_path.glob(".merged.*"))  # nothing half-written beside it
    notes = [c.note for c in SEED[:3]]
    merged = HFBackend(ModelSpec(base=str(out), quantization="none"))
    on_nf4 = HFBackend(ModelSpec(quantization="nf4", adapter=str(usual_adapter)))
    settings = GenerationSettings(decoding="free")
    assert [g.text for g in merged.generate(notes, settings)] == [g.text for g in on_nf4.generate(notes, settings)]
    with pytest.raises(HarnessError, match="already exists"):
        export_merged(usual_adapter, out)
