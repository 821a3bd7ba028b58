"""The suite's variants: each base numerics its own, and a baseline paired like with like."""

import json

import pytest

from harness.schema import dumps
from harness.suite import Suite, SuiteOptions, gated, variants
from scenarios import SEED

CASE = SEED[0]


def _suite(tmp_path, baseline_options: dict, recorded: dict[str, str]) -> Suite:
    """A suite over NF4 and unquantised tuned variants, against a baseline whose runs answered `recorded`."""
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"options": baseline_options, "roles": {
        name: {"scenarios": {CASE.id: {"note": CASE.note, "expected": CASE.expected, "output": output}}}
        for name, output in recorded.items()}}))
    return Suite(SuiteOptions(adapter=None, scenario_sets=("seed",), decodings=("free",), gate_decodings=("free",),
                              quantizations=("nf4", "none"), baseline=path))


def _answered(suite, variant):
    scenarios = suite.baseline_scenarios(variant)
    return None if scenarios is None else scenarios[CASE.id]["output"]


def test_each_numerics_is_its_own_variant_and_only_the_served_ones_are_gated():
    options = SuiteOptions(adapter=None, decodings=("free", "grounded"), quantizations=("nf4", "none"))
    assert [v.name for v in variants(options)] == ["base:free", "prompted:free", "tuned:free", "tuned:grounded",
                                                   "tuned:free@none", "tuned:grounded@none"]
    assert [v.id for v in gated(options)] == ["tuned-free", "tuned-grounded"]  # served on nf4 by default
    with pytest.raises(ValueError, match="distinct base numerics"):
        SuiteOptions(quantizations=("nf4", "int8"))


def test_a_baseline_pairs_like_with_like_across_numerics(tmp_path):
    good, chatty = dumps(CASE.expected), "Sure! " + dumps(CASE.expected)
    today = _suite(tmp_path, {"quantizations": ["nf4", "none"]}, {"tuned:free": good, "tuned:free@none": chatty})
    assert (_answered(today, "tuned:free"), _answered(today, "tuned:free@none")) == (good, chatty)
    # Summaries from before numerics were variants ran everything on one options.quantization.
    old_nf4 = _suite(tmp_path, {"quantization": "nf4"}, {"tuned:free": good})
    assert (_answered(old_nf4, "tuned:free"), _answered(old_nf4, "tuned:free@none")) == (good, None)
    old_none = _suite(tmp_path, {"quantization": "none"}, {"tuned:free": chatty})
    assert (_answered(old_none, "tuned:free"), _answered(old_none, "tuned:free@none")) == (None, chatty)
    oldest = _suite(tmp_path, {"quantization": "nf4"}, {"tuned": good})  # before decoding modes: keyed by role
    assert _answered(oldest, "tuned:free") == good


def test_rescoring_a_baseline_keeps_how_each_answer_ended(tmp_path):
    path = tmp_path / "baseline.json"
    looped = {"note": CASE.note, "expected": CASE.expected, "output": '{"resourceType": "x", "x": "x", "x"',
              "stopped": False, "looped": True, "seconds": 4.5}
    path.write_text(json.dumps({"options": {"quantizations": ["nf4"]}, "roles": {
        "tuned:free": {"scenarios": {CASE.id: looped}}}}))
    suite = Suite(SuiteOptions(adapter=None, scenario_sets=("seed",), decodings=("free",), baseline=path))
    rescored = suite.baseline_scenarios("tuned:free")[CASE.id]
    assert (rescored["stopped"], rescored["looped"], rescored["seconds"]) == (False, True, 4.5)
    assert not rescored["passed"]  # scored again by today's checks
