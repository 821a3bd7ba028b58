"""`sunrise prepare-base`: a base whose weights sit on the NF4 grid, so NF4 and full precision agree."""

import json
import subprocess
import sys

import pytest

from harness.errors import HarnessError
from harness.models import AdapterInfo, ModelSpec, check_adapter_base, load_backend, resolve_base
from harness.nf4_grid import MARKER, nf4_grid_weights, prepare_base


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A small randomly initialised Llama with the real tokenizer, saved as a plain model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("bases") / "tiny-llama"
    tokenizer = AutoTokenizer.from_pretrained(resolve_base("embedded").folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_prepared_base_is_its_own_nf4_copy(tiny_base, tmp_path):
    out = tmp_path / "grid"
    record = prepare_base(str(tiny_base), out)
    assert record["snapped_matrices"] == 2 * 7  # q, k, v, o, gate, up, down in each layer
    assert json.loads((out / MARKER).read_text()) == record
    resolved = resolve_base(str(out))
    assert resolved.nf4_grid and resolved.name == "tiny-llama"  # adapters of the source fit it
    assert resolved.weights_sha256 != resolve_base(str(tiny_base)).weights_sha256
    source, prepared = _weights(tiny_base), _weights(out)
    # NF4 of the prepared weights gives them back bit for bit; the source's weights moved onto the grid.
    again = nf4_grid_weights(ModelSpec(base=str(out)), resolved)
    assert len(again) == 14
    for name, weight in again.items():
        assert (weight == prepared[name]).all(), name
        assert not (weight == source[name]).all(), name
    # What NF4 leaves alone (embeddings, norms) is copied as it was.
    assert (prepared["model.embed_tokens.weight"] == source["model.embed_tokens.weight"]).all()


def test_an_adapter_of_the_source_fits_the_prepared_base_and_the_identity_says_which(tiny_base, tmp_path):
    prepare_base(str(tiny_base), tmp_path / "grid")
    resolved = resolve_base(str(tmp_path / "grid"))
    check_adapter_base(AdapterInfo(path=tmp_path, base_name="tiny-llama", sha256=""), resolved)
    assert load_backend(ModelSpec(base=str(tmp_path / "grid"))).identity["base_grid"] == "nf4"
    assert "base_grid" not in load_backend(ModelSpec(base=str(tiny_base))).identity


def test_prepare_base_refuses_what_would_be_wrong(tiny_base, tmp_path):
    prepare_base(str(tiny_base), tmp_path / "grid")
    with pytest.raises(HarnessError, match="already on the NF4 grid"):
        prepare_base(str(tmp_path / "grid"), tmp_path / "again")
    cli = subprocess.run([sys.executable, "-m", "harness.cli", "prepare-base", "--base-model", str(tiny_base),
                          "--out", str(tmp_path / "grid")], capture_output=True, text=True)
    assert cli.returncode == 2 and "already exists" in cli.stderr and "never overwrites" in cli.stderr
    assert not list(tmp_path.glob(".grid.*"))  # nothing half-written beside it
