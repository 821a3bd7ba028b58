"""The evaluation suite: base, prompted and tuned models against every scenario and check, and the gate.

Select with markers: `pytest -m tuned` (the regression run and gate), `pytest -m base` and
`pytest -m prompted` (document how the base model behaves, as it is and zero-shot with an engineered
prompt; their failures are expected). Test ids name model, decoding, check and
scenario, so `-k "tuned and age"`, `-k tuned-grounded` or `-k seed-5` work as expected.
"""

from __future__ import annotations

import pytest

from harness.gate import CEILINGS, figures, meets
from harness.suite import NOT_WORSE_METRICS, ModelUnavailable, base_for, gated


def _metrics_or_fail(suite, variant):
    try:
        return suite.metrics(variant)
    except ModelUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def test_check(sunrise_suite, sunrise_check):
    """One check on one model's answer to one scenario (generated once, shared by every check)."""
    variant, check, scenario_id = sunrise_check
    try:
        outcome = sunrise_suite.outcome(variant, scenario_id)
    except ModelUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    verdict = outcome.verdicts.get(check)
    if outcome.error:
        message = f"{scenario_id}: the note could not be processed: {outcome.error}"
    elif verdict.ok:
        return
    else:
        message = f"{check} failed on {scenario_id}: {verdict.reason}"
    role = sunrise_suite.variants[variant].role
    if role in ("base", "prompted"):
        pytest.xfail(f"{role} model (evidence, not a failure): {message}")
    if sunrise_suite.baseline is not None:
        # With a baseline, single-scenario failures are judged by the paired gate below.
        known = sunrise_suite.baseline_check_failed(variant, scenario_id, check)
        pytest.xfail(("also failing in the baseline: " if known else "judged by the baseline gate: ") + message)
    pytest.fail(message, pytrace=False)


@pytest.mark.tuned
@pytest.mark.slow
def test_threshold(sunrise_suite, sunrise_gated, sunrise_metric):
    """Each gated tuned variant reaches each floor (and stays under each ceiling) of
    [tool.sunrise.thresholds] (and its sub-table for the variant's decoding) over the whole scenario set."""
    metrics = _metrics_or_fail(sunrise_suite, sunrise_gated)
    limit = getattr(sunrise_suite.options.floors(sunrise_suite.variants[sunrise_gated].decoding), sunrise_metric)
    word = "above ceiling" if sunrise_metric in CEILINGS else "below floor"
    value, shown_limit = figures(sunrise_metric, metrics[sunrise_metric], limit)
    assert meets(sunrise_metric, metrics[sunrise_metric], limit), f"{sunrise_metric} = {value}, {word} {shown_limit}"


@pytest.mark.tuned
@pytest.mark.slow
@pytest.mark.parametrize("metric", NOT_WORSE_METRICS)
def test_tuned_not_worse_than_base(sunrise_suite, sunrise_gated, metric):
    """The tuned model against the base model decoded the same way (or as prompted, free, where the
    base did not run under that decoding: --base-decoding)."""
    tuned = _metrics_or_fail(sunrise_suite, sunrise_gated)
    base_variant = base_for(sunrise_suite.options, sunrise_suite.variants[sunrise_gated].decoding).name
    base = _metrics_or_fail(sunrise_suite, base_variant)
    assert tuned[metric] >= base[metric], f"tuned {metric} {tuned[metric]:.3f} < base {base[metric]:.3f}"


@pytest.mark.tuned
@pytest.mark.slow
def test_not_worse_than_baseline(sunrise_suite, sunrise_gated):
    """Paired comparison with --baseline: exact McNemar on pass/fail flips, bootstrap on field F1."""
    if sunrise_suite.baseline is None:
        pytest.skip("no --baseline given")
    comparison = sunrise_suite.compare_with_baseline(sunrise_gated)
    if comparison is None:
        pytest.skip(f"the baseline has no {sunrise_gated} results")
    assert not comparison.worse, (
        "worse than the baseline beyond noise: " + "; ".join(comparison.reasons)
        + "; flipped pass->fail: " + ", ".join(comparison.flipped_to_fail))


@pytest.mark.tuned
@pytest.mark.slow
def test_hypothesis_held_out_notes(sunrise_suite):
    """Drawn notes of held-out concepts, each with its own truth, generated in one batch; a failure
    shrinks to a minimal note within a time budget (scenarios/profiles.py). Each example costs a
    generation, so it runs under the first gated decoding only."""
    judged = [v.name for v in gated(sunrise_suite.options)]
    if not judged:
        pytest.skip("no gated tuned variant in this run")
    try:
        result = sunrise_suite.property_search(judged[0])
    except ModelUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    if result.message is None:
        return
    if sunrise_suite.baseline is None:
        pytest.fail(f"minimal failing note found ({result.stats.line()}): {result.message}", pytrace=False)
    # With a baseline the paired gate decides; the minimal failing note is still shown (and reported).
    pytest.xfail(f"judged by the baseline gate; minimal failing note: {result.message}")
