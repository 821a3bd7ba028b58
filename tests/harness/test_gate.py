"""The gate's statistics. A barely trained adapter failing the real gate against the reference baseline,
its flips named, is tested end to end by tests/harness/test_cli.py::test_main_job_end_to_end."""

import pytest

from harness.gate import Thresholds, bootstrap_diff, compare, sign_test_p


def test_sign_test_matches_hand_computed_binomial_tails():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(1, 0) == 0.5
    assert sign_test_p(5, 0) == pytest.approx(1 / 32)
    assert sign_test_p(5, 1) == pytest.approx(7 / 64)  # P(X>=5 | n=6) = (6 + 1) / 64
    assert sign_test_p(0, 5) == 1.0


def test_bootstrap_is_paired_seeded_and_brackets_the_mean():
    new, old = [1.0, 0.9, 0.8, 1.0], [1.0, 1.0, 1.0, 1.0]
    mean, lo, hi = bootstrap_diff(new, old)
    assert mean == pytest.approx(-0.075) and lo <= mean <= hi and hi <= 0
    assert bootstrap_diff(new, old) == (mean, lo, hi)
    with pytest.raises(ValueError):
        bootstrap_diff([1.0], [])


def _runs(n, flips_to_fail=0, flips_to_pass=0, f1_drop=0.0):
    old = {f"s{i}": {"passed": i >= flips_to_pass, "f1": 1.0} for i in range(n)}
    new = {f"s{i}": {"passed": True, "f1": 1.0 - f1_drop} for i in range(n)}
    for i in range(n - flips_to_fail, n):
        new[f"s{i}"]["passed"] = False
    return new, old


def test_compare_flags_many_flips_but_not_one():
    assert not compare(*_runs(100, flips_to_fail=1)).worse
    worse = compare(*_runs(100, flips_to_fail=6))
    assert worse.worse and worse.flipped_to_fail == ["s94", "s95", "s96", "s97", "s98", "s99"]
    assert not compare(*_runs(100, flips_to_fail=6, flips_to_pass=6)).worse  # balanced: noise
    assert compare(*_runs(30, f1_drop=0.1)).worse  # every scenario lost F1: the interval excludes 0


def test_thresholds_validate_and_report_misses(tmp_path):
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Thresholds(field_f1=2)
    (tmp_path / "pyproject.toml").write_text("[tool.sunrise.thresholds]\nfield_f1 = 0.5\nbogus = 1\n")
    with pytest.raises(ValueError, match="unknown metric.*thresholds.*bogus"):
        Thresholds.from_pyproject(tmp_path / "pyproject.toml")
    (tmp_path / "pyproject.toml").write_text("[tool.sunrise.thresholds]\nfield_f1 = 0.5\n"
                                             "[tool.sunrise.thresholds-grounded]\nfield_f1 = 0.8\njson_valid = 1\n")
    assert Thresholds.from_pyproject(tmp_path / "pyproject.toml", decoding="free").field_f1 == 0.5
    grounded = Thresholds.from_pyproject(tmp_path / "pyproject.toml", decoding="grounded")
    assert (grounded.field_f1, grounded.json_valid) == (0.8, 1)  # the mode's sub-table overrides the table
    (tmp_path / "pyproject.toml").write_text("[tool.sunrise.thresholds-grounded]\nf1 = 0.5\n")
    with pytest.raises(ValueError, match="unknown metric.*thresholds-grounded.*f1"):
        Thresholds.from_pyproject(tmp_path / "pyproject.toml", decoding="grounded")
    with pytest.raises(ValueError, match="count"):
        Thresholds(ungrounded_values=-1)
    misses = Thresholds(ungrounded_values=2).misses({"json_valid": 1, "schema_valid": 0.9, "null_age": 1,
                                                     "med_count": 1, "field_f1": 0.99, "grounded": 1,
                                                     "ungrounded_values": 3})
    assert misses == {"schema_valid": (0.9, 0.98), "ungrounded_values": (3, 2)}  # a floor missed, a ceiling passed
    assert not Thresholds(ungrounded_values=3).misses({**dict.fromkeys(Thresholds.__dataclass_fields__, 1),
                                                       "ungrounded_values": 3})
