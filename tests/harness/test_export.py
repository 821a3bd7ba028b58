"""`sunrise export`: an adapter merged into its base, loadable as a plain model folder."""

import json
import subprocess
import sys

import pytest

from harness.errors import HarnessError
from harness.export import export_merged
from harness.models import GenerationSettings, HFBackend, ModelSpec
from harness.settings import REFERENCE_ADAPTER
from scenarios import SEED


def _sunrise(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True)


def test_export_refuses_a_folder_that_exists_and_an_adapter_that_is_not_one(tmp_path):
    (tmp_path / "taken").mkdir()
    taken = _sunrise("export", "--adapter", REFERENCE_ADAPTER, "--out", tmp_path / "taken")
    assert taken.returncode == 2 and "already exists" in taken.stderr and "never overwrites" in taken.stderr
    missing = _sunrise("export", "--adapter", tmp_path / "nowhere", "--out", tmp_path / "new")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not (tmp_path / "new").exists()


@pytest.mark.slow
def test_merged_export_loads_as_a_plain_model_and_answers_as_the_adapter_on_nf4(tmp_path):
    """A QLoRA adapter is merged into the NF4 weights it was trained on, so the plain merged model
    answers as the adapter does on NF4 (on the as-shipped weights it lost 0.11 F1, benchmarks/numerics.py)."""
    out = tmp_path / "merged"
    record = export_merged(REFERENCE_ADAPTER, out)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert list(out.glob("*.safetensors")) and not list(out.glob("adapter_*"))  # no peft left in it
    assert "sunrise_float64" not in (out / "config.json").read_text()  # other engines know its attention
    saved = json.loads((out / "sunrise_export.json").read_text())
    assert saved == record and saved["adapter"]["trained_on"] == "nf4" and saved["merged_into"] == "nf4 grid"
    assert saved["adapter"]["manifest"] == json.loads((REFERENCE_ADAPTER / "manifest.json").read_text())
    assert not list(tmp_path.glob(".merged.*"))  # nothing half-written beside it
    notes = [c.note for c in SEED[:3]]
    merged = HFBackend(ModelSpec(base=str(out), quantization="none"))
    on_nf4 = HFBackend(ModelSpec(quantization="nf4", adapter=str(REFERENCE_ADAPTER)))
    settings = GenerationSettings(decoding="free")
    assert [g.text for g in merged.generate(notes, settings)] == [g.text for g in on_nf4.generate(notes, settings)]
    with pytest.raises(HarnessError, match="already exists"):
        export_merged(REFERENCE_ADAPTER, out)
