"""pytest plugin: options, markers, parametrisation and the end-of-run report. Hooks only; the logic
lives in harness.suite, harness.gate and harness.report."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from harness.gate import Thresholds, gate_settings
from harness.grammar import DECODINGS
from harness.models import GenerationSettings
from harness.numerics import pin_reproducible_blas
from harness.openai_backend import HTTPOptions, is_served
from harness.pytest_setup import decide_setup_again
from harness.settings import REFERENCE_ADAPTER, REFERENCE_BASELINE
from harness.suite import (
    SCENARIO_SETS,
    Suite,
    SuiteOptions,
    applicable_checks,
    gated,
    load_scenarios,
    variants,
    write_summary,
)
from scenarios import profiles

SUITE_KEY = pytest.StashKey[Suite]()
OPTIONS_KEY = pytest.StashKey[SuiteOptions]()
REPORT_KEY = pytest.StashKey[tuple]()
MARKERS = {
    "base": "evaluates the base model (failures are expected and reported as xfail)",
    "prompted": "evaluates the base model zero-shot with an engineered prompt (the baseline an adapter must beat)",
    "tuned": "evaluates the base model plus the adapter under test (the gate)",
    "slow": "loads a real model or browser; skipped unless selected with -m or --run-slow",
    "browser": "drives headless Chromium through Playwright",
}


def _threshold(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise pytest.UsageError(f"--threshold takes NAME=VALUE, e.g. field_f1=0.9; got {text!r}") from None


def _modes(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _adapter(text: str) -> Path | str:
    """A LoRA folder, resolved (it is compared with the reference adapter), or a served adapter's name."""
    return text if is_served(text) else Path(text).resolve()


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, got {text!r}")
    return value


def _path_or_none(text: str) -> Path | str | None:
    return text if text in ("auto", "none") else Path(text)


def pytest_addoption(parser):
    g = parser.getgroup("sunrise", "Sunrise clinical-extraction evaluation")
    g.addoption("--base-model", default="embedded",
                help="base model: 'embedded', a Hugging Face id, folder or .gguf, or a served model "
                     "openai:MODEL@URL (any OpenAI-compatible server; key from OPENAI_API_KEY)")
    g.addoption("--adapter", type=_adapter, default=REFERENCE_ADAPTER,
                help="LoRA adapter under test (default: the reference adapter in fixtures/); with a served "
                     "base, the name the server serves it under, openai:NAME[#SHA256]")
    g.addoption("--http-concurrency", type=int, default=HTTPOptions().concurrency,
                help="requests in flight at once to a served model (default %(default)s)")
    g.addoption("--http-extra-body", type=_json_object, default={},
                help="a JSON object of server-specific fields sent with every request to a served model, e.g. "
                     "'{\"repeat_penalty\": 1}' for llama-cpp-python's server, which is otherwise not greedy")
    g.addoption("--quantization", default=None,
                help="comma-separated base numerics for the tuned model, each evaluated on its own (nf4, none: "
                     "unquantised, as merged or served adapters run; default: the gate's, [tool.sunrise.gate] "
                     "quantization in pyproject.toml); the base model runs under the first")
    g.addoption("--decoding", default=None,
                help=f"comma-separated decoding modes for the tuned model, each evaluated on its own "
                     f"({', '.join(DECODINGS)}; default: "
                     "the gate's modes, [tool.sunrise.gate] decoding in pyproject.toml)")
    g.addoption("--base-decoding", default="free",
                help="comma-separated decoding modes for the base model (default: free, the base as the study "
                     "prompts it; a tuned variant is compared with the base under its own mode where it ran)")
    g.addoption("--prompted-decoding", default="free",
                help="comma-separated decoding modes for the prompted role, the base model zero-shot with the "
                     "engineered prompt of harness/prompt.py (default: free; 'none': no prompted role)")
    g.addoption("--baseline", type=_path_or_none, default="auto",
                help="summary.json of an earlier run to gate against (default: the reference adapter's "
                     "baseline when the reference adapter is under test; 'none' for no baseline)")
    g.addoption("--threshold", type=_threshold, action="append", default=[],
                help="override a gate threshold under every decoding mode, NAME=VALUE (repeatable)")
    g.addoption("--report-dir", type=Path, default=Path("reports"), help="where HTML reports and summaries go")
    g.addoption("--scenario-sets", default=",".join(SCENARIO_SETS),
                help=f"comma-separated scenario sets (default: {','.join(SCENARIO_SETS)})")
    g.addoption("--test-split-size", type=int, default=100, help="held-out test-split scenarios (default 100)")
    g.addoption("--no-generation-cache", action="store_true", help="always generate (never read the cache)")
    g.addoption("--fake-outputs", type=Path, default=None,
                help="JSON {role: {note: output}} (a key such as tuned@none scripts one base numerics): scripted "
                     "models instead of real ones (for testing the suite)")
    g.addoption("--run-slow", action="store_true", help="also run slow tests (real models, browser)")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """The first hook to see this plugin's options parsed: pytest guessed its rootdir and ini file
    before, taking the value of `--adapter /some/dir` for a test path (harness/pytest_setup.py)."""
    decide_setup_again(early_config, args)


def pytest_configure(config):
    pin_reproducible_blas()  # before any test touches torch: the whole session's outputs batch-invariant
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    profiles.load(os.environ.get("SUNRISE_HYPOTHESIS_PROFILE"))
    adapter = config.getoption("--adapter")
    baseline = config.getoption("--baseline")
    if baseline == "auto":  # the reference adapter is judged against its own recorded run
        baseline = REFERENCE_BASELINE if adapter == REFERENCE_ADAPTER and REFERENCE_BASELINE.is_file() else None
    elif baseline == "none":
        baseline = None
    try:
        pyproject = Path(config.rootpath) / "pyproject.toml"
        gate = gate_settings(pyproject)
        gate_modes = gate["decoding"]
        overrides = dict(config.getoption("--threshold"))
        thresholds = {mode: Thresholds.from_pyproject(pyproject, decoding=mode).with_overrides(overrides)
                      for mode in gate_modes}
        targets = Thresholds.from_pyproject(pyproject, table="targets")
        decoding = config.getoption("--decoding")
        options = SuiteOptions(
            base_model=config.getoption("--base-model"), adapter=adapter,
            quantizations=_modes(config.getoption("--quantization") or ",".join(gate["quantization"])),
            gate_quantizations=gate["quantization"],
            scenario_sets=tuple(s for s in config.getoption("--scenario-sets").split(",") if s),
            test_split_size=config.getoption("--test-split-size"), baseline=baseline, thresholds=thresholds,
            targets=targets,
            report_dir=config.getoption("--report-dir"), cache=not config.getoption("--no-generation-cache"),
            settings=GenerationSettings(), fake_outputs=config.getoption("--fake-outputs"),
            decodings=_modes(decoding) if decoding else gate_modes,
            base_decodings=_modes(config.getoption("--base-decoding")), gate_decodings=gate_modes,
            prompted_decodings=() if config.getoption("--prompted-decoding") == "none"
            else _modes(config.getoption("--prompted-decoding")),
            http=HTTPOptions(concurrency=config.getoption("--http-concurrency"),
                             extra_body=config.getoption("--http-extra-body")),
        )
    except (ValueError, TypeError) as exc:
        raise pytest.UsageError(f"sunrise: {exc}") from None
    config.stash[OPTIONS_KEY] = options


def pytest_generate_tests(metafunc):
    """Parametrise the suite's tests: ids name the model, its decoding, the check and the scenario."""
    options = metafunc.config.stash[OPTIONS_KEY]
    names = metafunc.fixturenames
    if "sunrise_check" in names:
        params = [
            pytest.param((v.name, check, case.id), id=f"{v.id}-{check}-{case.id}",
                         marks=[getattr(pytest.mark, v.role), pytest.mark.slow])
            for v in variants(options) for case in load_scenarios(options) for check in applicable_checks(case)
        ]
        metafunc.parametrize("sunrise_check", params)
    if "sunrise_gated" in names:
        metafunc.parametrize("sunrise_gated", [v.name for v in gated(options)], ids=[v.id for v in gated(options)])
    if "sunrise_metric" in names:
        metrics = list(Thresholds.__dataclass_fields__)
        metafunc.parametrize("sunrise_metric", metrics, ids=metrics)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow (real model or browser): select with -m base/tuned/slow or --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sunrise_suite(request) -> Suite:
    config = request.config
    if SUITE_KEY not in config.stash:
        reporter = config.pluginmanager.get_plugin("terminalreporter")

        def progress(message):
            if reporter is not None:
                reporter.write_line(f"[sunrise] {message}")

        config.stash[SUITE_KEY] = Suite(config.stash[OPTIONS_KEY], progress=progress)
    return config.stash[SUITE_KEY]


def pytest_sessionfinish(session, exitstatus):
    """Write the run's summary and HTML report, also after an interruption (then marked incomplete)."""
    suite = session.config.stash.get(SUITE_KEY, None)
    if suite is None or not suite.evaluation.runs:
        return
    from harness.report import write_index, write_report

    complete = exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
    summary = suite.summary(complete=complete)
    folder = write_summary(summary, suite.options.report_dir)
    write_report(summary, folder / "report.html")
    write_index(suite.options.report_dir)
    session.config.stash[REPORT_KEY] = (folder, summary)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if REPORT_KEY not in config.stash:
        return
    folder, summary = config.stash[REPORT_KEY]
    from harness.report import comparison_line, gate_lines

    terminalreporter.section("sunrise")
    claim = comparison_line(summary)
    if claim:
        terminalreporter.write_line(claim)
    for line in gate_lines(summary):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"report: {folder / 'report.html'}")
    terminalreporter.write_line(f"summary: {folder / 'summary.json'} (use as --baseline for the next adapter)")
