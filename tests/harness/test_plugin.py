"""The pytest plugin end to end with pytester: options, markers, xfail policy, the gate's exit code."""

import json
import re
import shutil
from pathlib import Path

import pytest

from harness.schema import dumps
from harness.suite import SuiteOptions, load_scenarios

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "tests" / "evaluation" / "test_models.py"
SETS = ("--scenario-sets", "seed,curated")


@pytest.fixture
def project(pytester, monkeypatch):
    """A pytester folder holding the evaluation suite and the project's pyproject (markers, thresholds)."""
    monkeypatch.setenv("SUNRISE_CACHE_DIR", str(pytester.path / "cache"))
    (pytester.path / "tests").mkdir()
    shutil.copy(SUITE, pytester.path / "tests" / "test_models.py")
    shutil.copy(ROOT / "pyproject.toml", pytester.path / "pyproject.toml")
    return pytester


def _outputs(path: Path, broken=(), base_good=False) -> Path:
    cases = load_scenarios(SuiteOptions(adapter=None, scenario_sets=("seed", "curated")))
    tuned = {c.note: dumps(c.expected) for c in cases}
    for cid in broken:
        case = next(c for c in cases if c.id == cid)
        tuned[case.note] = "Sure, here is the summary: " + dumps({**case.expected, "symptoms": []})
    base = {c.note: (dumps(c.expected) if base_good else '{"name": "x", "symptoms": []}') for c in cases}
    # The zero-shot prompted base gets the seed notes right and wraps the rest in chatter.
    prompted = {c.note: dumps(c.expected) if c.id.startswith("seed") else "Here you go: {}" for c in cases}
    path.write_text(json.dumps({"tuned": tuned, "base": base, "prompted": prompted}))
    return path


def _run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                         "--report-dir", str(pytester.path / "reports"), *SETS, *args)


def test_plain_pytest_skips_model_tests(project):
    result = _run(project)
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes["skipped"] > 100 and "passed" not in outcomes


def test_tuned_run_passes_and_writes_summary_and_report(project):
    fake = _outputs(project.path / "fake.json")
    result = _run(project, "-m", "tuned", "--fake-outputs", str(fake), "-k", "not hypothesis")
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*gate: PASSED*", "*report: *report.html*", "*summary: *summary.json*"])
    summary = json.loads(next((project.path / "reports").glob("*/summary.json")).read_text())
    assert summary["gate"]["passed"] and summary["roles"]["tuned:free"]["metrics"]["field_f1"] == 1.0
    assert (project.path / "reports" / "index.html").is_file()


def test_base_failures_are_expected_failures_not_red(project):
    fake = _outputs(project.path / "fake.json")
    result = _run(project, "-m", "base", "--fake-outputs", str(fake), "-rx")
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes["xfailed"] > 50 and "failed" not in outcomes
    result.stdout.fnmatch_lines(["*XFAIL*test_check?base-free-no_invented_keys-seed-1?*invented keys: name, symptoms*"])


def test_test_ids_select_by_model_check_and_scenario(project):
    fake = _outputs(project.path / "fake.json")
    result = _run(project, "-m", "tuned", "--fake-outputs", str(fake), "-k", "age and seed-5", "-v")
    result.stdout.fnmatch_lines(["*test_check?tuned-free-age-seed-5? PASSED*",
                                 "*test_check?tuned-grounded-age-seed-5? PASSED*"])
    result.assert_outcomes(passed=2)  # one per decoding mode of the gate


def test_base_runs_as_prompted_unless_more_modes_are_asked_for(project):
    fake = _outputs(project.path / "fake.json")
    plain = _run(project, "-m", "base", "--fake-outputs", str(fake), "-k", "age and seed-5", "-v")
    plain.stdout.fnmatch_lines(["*test_check?base-free-age-seed-5? XFAIL*"])
    assert "base-grounded" not in plain.stdout.str()
    both = _run(project, "-m", "base", "--fake-outputs", str(fake), "-k", "age and seed-5", "-v",
                "--base-decoding", "free,grounded")
    both.stdout.fnmatch_lines(["*test_check?base-free-age-seed-5? XFAIL*",
                               "*test_check?base-grounded-age-seed-5? XFAIL*"])
    assert _run(project, "--base-decoding", "loose").ret == 4


def test_prompted_role_is_reported_beside_base_and_tuned_and_never_gated(project):
    fake = _outputs(project.path / "fake.json")
    result = _run(project, "-m", "base or prompted or tuned", "--fake-outputs", str(fake), "-k", "not hypothesis")
    assert result.ret == 0, result.stdout.str()[-3000:]
    summary = json.loads(next((project.path / "reports").glob("*/summary.json")).read_text())
    share = summary["roles"]["prompted:free"]["metrics"]["schema_valid"]
    assert 0 < share < 1 and set(summary["gate"]["variants"]) == {"tuned:free", "tuned:grounded"}
    result.stdout.fnmatch_lines([f"*schema valid: base 0%, prompted {100 * share:.0f}%, tuned 100%*field F1:*"])
    assert result.parseoutcomes()["xfailed"] > 50  # the prompted role's failures are evidence, like the base's
    report = next((project.path / "reports").glob("*/report.html")).read_text()
    assert "prompted:free" in report and 'id="claim"' in report
    none = _run(project, "-m", "prompted", "--fake-outputs", str(fake), "--prompted-decoding", "none")
    assert none.ret == 5  # no prompted tests collected


def test_gate_fails_on_missed_threshold_and_names_flipped_scenarios(project):
    good = _outputs(project.path / "good.json")
    assert _run(project, "-m", "tuned", "--fake-outputs", str(good), "-k", "not hypothesis").ret == 0
    baseline = next((project.path / "reports").glob("*/summary.json"))
    broken = ["seed-1", "seed-2", "seed-3", "seed-4", "seed-5", "meds-4", "no-name"]
    bad = _outputs(project.path / "bad.json", broken=broken)
    result = _run(project, "-m", "tuned", "--fake-outputs", str(bad), "--baseline", str(baseline),
                  "-k", "not hypothesis", "--threshold", "json_valid=1.0")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*gate: FAILED*",
        "*threshold missed: json_valid = 0.632 < 1.000*",
        "*flipped pass->fail: meds-4, no-name, seed-1, seed-2, seed-3, seed-4, seed-5*",
        "*FAILED*test_threshold?tuned-free-json_valid?*",
        "*FAILED*test_not_worse_than_baseline*",
    ])
    assert "test_check[tuned-free-no_chatter-seed-1] FAILED" not in result.stdout.str()  # judged by the gate


def test_one_flip_is_noise_for_the_paired_gate(project):
    good = _outputs(project.path / "good.json")
    _run(project, "-m", "tuned", "--fake-outputs", str(good), "-k", "not hypothesis")
    baseline = next((project.path / "reports").glob("*/summary.json"))
    one = _outputs(project.path / "one.json", broken=["seed-1"])
    result = _run(project, "-m", "tuned", "--fake-outputs", str(one), "--baseline", str(baseline),
                  "-k", "baseline", "-v")
    result.stdout.fnmatch_lines(["*test_not_worse_than_baseline?tuned-free? PASSED*"])


def test_the_adapter_is_judged_under_the_numerics_it_will_be_served_with(project):
    """--quantization evaluates the adapter under more base numerics, each its own variant; the gate
    judges those pyproject.toml says the adapter will be served with."""
    fake = _outputs(project.path / "fake.json")
    scripts = json.loads(fake.read_text())
    # Off its NF4 training weights this adapter falls apart, as QLoRA adapters can: chatter everywhere.
    scripts["tuned@none"] = {note: "Sure! " + out for note, out in scripts["tuned"].items()}
    fake.write_text(json.dumps(scripts))
    args = ("-m", "tuned", "--fake-outputs", str(fake), "-k", "not hypothesis", "--decoding", "free")
    reported = _run(project, *args, "--quantization", "nf4,none", "-v")
    assert reported.ret == 0, reported.stdout.str()[-3000:]  # pyproject: served on nf4, so none is evidence
    reported.stdout.fnmatch_lines(["*test_check?tuned-free-none-no_chatter-seed-1? XFAIL*"])
    summary = json.loads(next((project.path / "reports").glob("*/summary.json")).read_text())
    assert summary["roles"]["tuned:free@none"]["quantization"] == "none"
    assert summary["roles"]["tuned:free@none"]["metrics"]["json_valid"] == 0.0
    assert list(summary["gate"]["variants"]) == ["tuned:free"]
    assert "tuned:free@none" in next((project.path / "reports").glob("*/report.html")).read_text()
    pyproject = project.path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('quantization = ["nf4"]', 'quantization = ["nf4", "none"]'))
    served = _run(project, *args)  # the gate's numerics are evaluated without being asked for
    assert served.ret == 1
    served.stdout.fnmatch_lines(["*gate: FAILED*", "*tuned:free@none: FAILED*"])
    assert _run(project, "--quantization", "nf8").ret == 4


def test_thresholds_come_from_pyproject_and_options(project):
    pyproject = project.path / "pyproject.toml"  # the first json_valid is the thresholds table's
    pyproject.write_text(re.sub(r"(?m)^json_valid = [0-9.]+$", "json_valid = 1.0", pyproject.read_text(), count=1))
    fake = _outputs(project.path / "fake.json", broken=["seed-1"])
    strict = _run(project, "-m", "tuned", "--fake-outputs", str(fake), "-k", "threshold")
    assert strict.ret == 1  # the pyproject floor json_valid = 1.0 is missed by one chatty answer
    strict.stdout.fnmatch_lines(["*target not yet met (reported, not gating): json_valid*"])
    loose = _run(project, "-m", "tuned", "--fake-outputs", str(fake), "-k", "threshold",
                 "--threshold", "json_valid=0.9", "--threshold", "schema_valid=0.9")
    assert loose.ret == 0, loose.stdout.str()[-2000:]
    bad = _run(project, "--threshold", "f1")
    assert bad.ret == 4 and "NAME=VALUE" in bad.stderr.str()


def test_server_specific_request_fields_are_checked_where_they_enter(project):
    not_an_object = _run(project, "--http-extra-body", "[1]")
    assert not_an_object.ret == 4 and "a JSON object is needed" in not_an_object.stderr.str()
    own_field = _run(project, "--http-extra-body", '{"max_tokens": 5}')
    assert own_field.ret == 4 and "may not set max_tokens" in own_field.stderr.str()


def test_unknown_marker_is_an_error(project):
    (project.path / "tests" / "test_marked.py").write_text(
        "import pytest\n@pytest.mark.tunned\ndef test_x():\n    pass\n")
    result = _run(project, "tests/test_marked.py")
    assert result.ret != 0 and "tunned" in result.stdout.str()


def test_broken_adapter_fails_every_tuned_test_with_one_clear_message(project, tmp_path):
    adapter = tmp_path / "broken"
    adapter.mkdir()
    (adapter / "adapter_model.bin").write_bytes(b"pickle")
    result = _run(project, "-m", "tuned", "--adapter", str(adapter), "-k", "seed-1 and age")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*tuned:free model could not be loaded*pickled adapter_model.bin*"])


def test_interrupted_run_leaves_a_valid_report_marked_incomplete(project):
    fake = _outputs(project.path / "fake.json")
    (project.path / "tests" / "conftest.py").write_text(
        "def pytest_runtest_call(item):\n"
        "    if 'tuned-' in item.name:\n"
        "        raise KeyboardInterrupt\n")
    result = _run(project, "-m", "base or tuned", "--fake-outputs", str(fake))
    assert result.ret == 2  # interrupted
    summary = json.loads(next((project.path / "reports").glob("*/summary.json")).read_text())
    assert summary["complete"] is False and summary["roles"]["base:free"]["scenarios"]
    html = next((project.path / "reports").glob("*/report.html")).read_text()
    assert 'id="incomplete"' in html and "</html>" in html


def _option_args(form: str, options: dict) -> list[str]:
    return [a for name, value in options.items()
            for a in ((name, str(value)) if form == "--opt value" else (f"{name}={value}",))]


@pytest.mark.parametrize("form", ["--opt value", "--opt=value"])
def test_paths_outside_the_checkout_leave_pytest_its_rootdir_and_the_gate_its_config(adapter_copy, tmp_path, form):
    """`pytest -m tuned --adapter /abs/dir` in the checkout, no test path given: pytest guesses its rootdir
    before the plugin's options parse, and took the adapter's folder for it, so the gate ran without
    pyproject.toml (floors at the targets, free decoding only). The plugin decides it again."""
    import subprocess
    import sys

    reports = tmp_path / "reports"
    reports.mkdir()
    baseline = tmp_path / "baseline.json"
    shutil.copy(ROOT / "fixtures" / "reference-adapter" / "baseline.json", baseline)
    options = {"--adapter": adapter_copy, "--baseline": baseline, "--report-dir": reports}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "tuned", "--co",
                             *_option_args(form, options)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    header = result.stdout[:1000]
    assert f"rootdir: {ROOT}\n" in header and "configfile: pyproject.toml" in header and "testpaths: tests" in header
    # The gate's modes come from pyproject.toml ([tool.sunrise.gate]): grounded decoding is judged too.
    assert "test_threshold[tuned-grounded-field_f1]" in result.stdout


@pytest.mark.parametrize("form", ["--opt value", "--opt=value"])
def test_gate_takes_paths_outside_the_checkout_from_another_directory(pytester, adapter_copy, tmp_path, form):
    """The plugin is installed (pytest11), so an existing path given as an option's value is parsed
    as that value, never taken for a test path whose folder would become pytest's rootdir."""
    reports = tmp_path / "elsewhere" / "reports"
    reports.mkdir(parents=True)  # an existing folder: the case pytest used to mistake for a test path
    fake = _outputs(tmp_path / "fake.json")
    first = pytester.runpytest_subprocess(str(SUITE), "-p", "no:cacheprovider", "-m", "tuned", *SETS,
                                          "-k", "not hypothesis", "--fake-outputs", str(fake),
                                          "--baseline", "none", "--report-dir", str(reports))
    assert first.ret == 0, first.stdout.str()[-2000:]
    baseline = next(reports.glob("*/summary.json")).resolve()
    options = {"--adapter": adapter_copy, "--baseline": baseline, "--report-dir": reports}
    result = pytester.runpytest_subprocess(str(SUITE), "-p", "no:cacheprovider", "-m", "tuned", *SETS,
                                           "-k", "not hypothesis", "--fake-outputs", str(fake),
                                           *_option_args(form, options))
    assert result.ret == 0, result.stdout.str()[-2000:] + result.stderr.str()[-2000:]
    assert pytester.path != ROOT and f"rootdir: {ROOT}" in result.stdout.str()
    result.stdout.fnmatch_lines(["*gate: PASSED*", f"*vs baseline {baseline}*"])
    newest = max(reports.glob("*/summary.json"), key=lambda p: p.stat().st_mtime_ns)
    summary = json.loads(newest.read_text())
    assert summary["options"]["adapter"] == str(adapter_copy) and summary["options"]["baseline"] == str(baseline)
