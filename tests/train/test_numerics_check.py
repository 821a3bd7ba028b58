"""The numerics check training ends with: the saved adapter on NF4 and unquantised bases alike."""

import json
import shutil
import subprocess
import sys

import pytest

from harness.errors import HarnessError
from harness.settings import REFERENCE_ADAPTER
from scenarios.splits import GENERATOR_VERSION, SplitSizes, generate_split
from train.dataset import dataset_hash, write_dataset
from train.numerics_check import (
    FIGURES,
    NUMERICS,
    TOLERANCE,
    check_numerics,
    check_saved_adapter,
)

TINY = SplitSizes(train=4, val=4, test=0)


def _adapter_trained_on(tmp_path, manifest_dataset: dict):
    """A copy of the reference adapter whose manifest names other training data."""
    adapter = tmp_path / "adapter"
    shutil.copytree(REFERENCE_ADAPTER, adapter)
    manifest = json.loads((adapter / "manifest.json").read_text())
    manifest["dataset"] = manifest_dataset
    (adapter / "manifest.json").write_text(json.dumps(manifest))
    return adapter


def test_a_check_after_training_refuses_what_it_cannot_compare(tmp_path):
    """The loss is only comparable on the validation notes the adapter was trained with: no manifest,
    data from elsewhere, another generator version or other data is a clear error, and the manifest is
    left as it was."""
    with pytest.raises(HarnessError, match="not a training manifest"):
        check_saved_adapter(tmp_path, notes=0)
    data = tmp_path / "data"
    write_dataset(data, TINY, seed=0)
    cases = {
        "from elsewhere; pass that folder as --data": {"sha256": dataset_hash(data), "generated": None},
        "generator version 1": {"sha256": dataset_hash(data),
                                "generated": {"generator_version": 1, "seed": 0, "sizes": vars(TINY)}},
        "the regenerated dataset is not the data": {"sha256": "0" * 64, "generated": {
            "generator_version": GENERATOR_VERSION, "seed": 0, "sizes": vars(TINY)}},
    }
    for message, dataset in cases.items():
        adapter = _adapter_trained_on(tmp_path / message.split()[0], dataset)
        before = (adapter / "manifest.json").read_text()
        with pytest.raises(HarnessError, match=message):
            check_saved_adapter(adapter, notes=0)
        assert (adapter / "manifest.json").read_text() == before
    with pytest.raises(HarnessError, match=f"the data in {tmp_path} is not the data"):
        check_saved_adapter(adapter, notes=0, data_dir=tmp_path)


@pytest.mark.slow
def test_the_check_sees_the_reference_adapter_fit_the_nf4_copy_of_the_shipped_base():
    """Trained on the NF4 copy of the shipped weights, the reference adapter fits it better than the
    unquantised weights (README, "An adapter off the weights it was trained on"): its validation loss,
    on answers tokenised as it was trained, is lower there, and the record says so."""
    result = check_numerics(REFERENCE_ADAPTER, "embedded", generate_split("val", 8), notes=2)
    rows = result["numerics"]
    assert set(rows) == set(NUMERICS) and result["test_notes"] == 2 and result["tolerance"] == TOLERANCE
    assert 0 < rows["nf4"]["val_loss"] < rows["none"]["val_loss"]
    for row in rows.values():
        assert all(0 <= row[m] <= 1 for m in FIGURES) and row["errors"] == 0
    assert result["gaps"] == {m: round(abs(rows["nf4"][m] - rows["none"][m]), 3) for m in ("schema_valid", "field_f1")}
    assert result["holds"] == all(g <= TOLERANCE for g in result["gaps"].values())


@pytest.mark.slow
def test_check_numerics_command_records_the_check_in_the_manifest(tmp_path):
    """`sunrise check-numerics`, as run after a torchrun training: the validation notes regenerated as
    the manifest says (a 4-note dataset here, to keep it short) and each numerics' loss recorded."""
    data = tmp_path / "data"
    write_dataset(data, TINY, seed=3)
    adapter = _adapter_trained_on(tmp_path, {"sha256": dataset_hash(data), "generated": {
        "generator_version": GENERATOR_VERSION, "seed": 3, "sizes": vars(TINY)}})
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "check-numerics", "--adapter", str(adapter),
                           "--check-notes", "0"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    check = json.loads((adapter / "manifest.json").read_text())["numerics_check"]
    assert set(check["numerics"]) == set(NUMERICS) and check["test_notes"] == 0
    assert 0 < check["numerics"]["nf4"]["val_loss"] < check["numerics"]["none"]["val_loss"]
    assert "by sunrise check-numerics" in check["recorded"]
    assert f"nf4   val_loss {check['numerics']['nf4']['val_loss']}" in proc.stdout
