"""The numerics check training ends with: the saved adapter on NF4 and unquantised bases alike."""

import json

import pytest

from harness.settings import REFERENCE_ADAPTER
from scenarios.splits import generate_split
from train.numerics_check import FIGURES, NUMERICS, TOLERANCE, check_numerics, trained_split


def test_the_check_tokenises_answers_as_the_adapter_was_trained(tmp_path):
    assert trained_split(REFERENCE_ADAPTER) == "all"
    assert trained_split(tmp_path) == "none"  # no manifest: BPE's own tokens
    legacy = {"split_closers": True}  # adapters trained before split_quotes
    for hyper, expected in ((legacy, "closers"), ({"split_quotes": "closers"}, "closers"), ({}, "none")):
        (tmp_path / "manifest.json").write_text(json.dumps({"hyperparameters": hyper}))
        assert trained_split(tmp_path) == expected


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
