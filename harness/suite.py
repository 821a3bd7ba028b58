"""The evaluation suite behind the pytest plugin: options, scenario sets, verdict policy and the
machine-readable summary of a run. The plugin module only wires these into pytest's hooks."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness.checks import run_checks
from harness.environment import versions
from harness.evaluation import Evaluation, Outcome
from harness.gate import Comparison, Thresholds, compare
from harness.models import FakeBackend, GenerationSettings, HFBackend, ModelSpec
from harness.scoring import score_case
from harness.settings import REFERENCE_ADAPTER
from scenarios.curated import CURATED, SEED
from scenarios.notes import Case
from scenarios.splits import generate_split

ROLES = ("base", "tuned")
SCENARIO_SETS = ("seed", "curated", "test")
# Metrics on which the tuned model must be at least as good as the base model.
NOT_WORSE_METRICS = ("json_valid", "schema_valid", "resource_type", "no_invented_keys", "null_age",
                     "stated_age", "dose_split", "med_count", "field_f1")


@dataclass(frozen=True)
class SuiteOptions:
    """What a suite run evaluates; built from pytest options and validated here."""

    base_model: str = "embedded"
    adapter: Path | None = REFERENCE_ADAPTER
    quantization: str = "nf4"
    scenario_sets: tuple[str, ...] = SCENARIO_SETS
    test_split_size: int = 100
    baseline: Path | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)  # the gate's floors
    targets: Thresholds = field(default_factory=Thresholds)  # the quality aimed at: reported, never failing
    report_dir: Path = Path("reports")
    cache: bool = True
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    fake_outputs: Path | None = None  # a JSON {role: {note: output}} file: scripted backends, no model

    def __post_init__(self):
        unknown = sorted(set(self.scenario_sets) - set(SCENARIO_SETS))
        if unknown:
            raise ValueError(f"unknown scenario set(s) {unknown}; choose from {', '.join(SCENARIO_SETS)}")
        if self.test_split_size < 0:
            raise ValueError("test split size must be >= 0")
        if self.baseline is not None and not Path(self.baseline).is_file():
            raise ValueError(f"baseline {self.baseline} does not exist (a summary.json of an earlier run)")


def load_scenarios(options: SuiteOptions) -> list[Case]:
    cases: list[Case] = []
    if "seed" in options.scenario_sets:
        cases += SEED
    if "curated" in options.scenario_sets:
        cases += CURATED
    if "test" in options.scenario_sets:
        cases += generate_split("test", options.test_split_size)
    return cases


def applicable_checks(case: Case) -> list[str]:
    """Checks that apply to a case, decided from its expected summary alone (known at collection)."""
    return list(run_checks(score_case(json.dumps(case.expected), case.expected)))


def backend_factories(options: SuiteOptions) -> dict:
    if options.fake_outputs is not None:
        scripted = json.loads(Path(options.fake_outputs).read_text())
        return {role: (lambda r=role: FakeBackend(scripted.get(r, {}), name=r)) for role in ROLES}
    base = ModelSpec(base=options.base_model, quantization=options.quantization)
    tuned = ModelSpec(base=options.base_model, quantization=options.quantization,
                      adapter=str(options.adapter) if options.adapter else None)
    return {"base": lambda: HFBackend(base), "tuned": lambda: HFBackend(tuned)}


class Suite:
    """One pytest session's evaluation: scenarios, lazily generated outcomes, baseline and gate."""

    def __init__(self, options: SuiteOptions, progress=None):
        self.options = options
        self.scenarios = load_scenarios(options)
        self.evaluation = Evaluation(self.scenarios, backend_factories(options), options.settings,
                                     cache=options.cache, progress=progress)
        self.baseline = json.loads(Path(options.baseline).read_text()) if options.baseline else None
        self.started = datetime.now(UTC)
        self.run_id = self.started.strftime("%Y%m%d-%H%M%S")

    # ------------------------------------------------------------------ verdicts
    def outcome(self, role: str, scenario_id: str) -> Outcome:
        run = self.evaluation.run(role)
        if run.error:
            raise ModelUnavailable(f"{role} model could not be loaded: {run.error}")
        return run.outcomes[scenario_id]

    def baseline_check_failed(self, role: str, scenario_id: str, check: str) -> bool:
        if not self.baseline:
            return False
        scenario = self.baseline.get("roles", {}).get(role, {}).get("scenarios", {}).get(scenario_id)
        return bool(scenario) and not scenario.get("checks", {}).get(check, {}).get("ok", True)

    def metrics(self, role: str) -> dict[str, float]:
        run = self.evaluation.run(role)
        if run.error:
            raise ModelUnavailable(f"{role} model could not be loaded: {run.error}")
        return run.aggregate().metrics()

    def compare_with_baseline(self, role: str = "tuned") -> Comparison | None:
        if not self.baseline or role not in self.baseline.get("roles", {}):
            return None
        old = self.baseline["roles"][role]["scenarios"]
        new = {k: v.to_dict() for k, v in self.evaluation.run(role).outcomes.items()}
        return compare(new, old)

    # ------------------------------------------------------------------ summary
    def summary(self, complete: bool) -> dict:
        roles = {}
        for role, run in self.evaluation.runs.items():
            agg = run.aggregate() if run.outcomes else None
            roles[role] = {
                "identity": run.identity,
                "error": run.error,
                "seconds": round(run.seconds, 1),
                "metrics": agg.metrics() if agg else {},
                "fields": agg.to_dict()["fields"] if agg else {},
                "scenarios": {k: v.to_dict() for k, v in run.outcomes.items()},
                "hypothesis": [o.to_dict() for o in run.extra],
                "cache": ({"hits": run.generator.cache.hits, "misses": run.generator.cache.misses}
                          if run.generator and run.generator.cache else None),
            }
        return {
            "run_id": self.run_id,
            "created": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "complete": complete,
            "options": {
                "base_model": self.options.base_model,
                "adapter": str(self.options.adapter) if self.options.adapter else None,
                "quantization": self.options.quantization,
                "scenario_sets": list(self.options.scenario_sets),
                "test_split_size": self.options.test_split_size,
                "baseline": str(self.options.baseline) if self.options.baseline else None,
            },
            "generation_settings": self.options.settings.to_dict(),
            "thresholds": asdict(self.options.thresholds),
            "targets": asdict(self.options.targets),
            "versions": versions(),
            "roles": roles,
            "gate": self.gate_summary(),
            "train_log": _train_log(self.options.adapter),
        }

    def gate_summary(self) -> dict | None:
        run = self.evaluation.runs.get("tuned")
        if run is None or not run.outcomes:
            return None
        tuned = run.aggregate().metrics()
        misses = self.options.thresholds.misses(tuned)
        comparison = self.compare_with_baseline()
        worse_than_base = {}
        base = self.evaluation.runs.get("base")
        if base is not None and base.outcomes:
            b = base.aggregate().metrics()
            worse_than_base = {m: (tuned[m], b[m]) for m in NOT_WORSE_METRICS if tuned[m] < b[m]}
        return {
            "passed": not misses and not (comparison and comparison.worse) and not worse_than_base,
            "threshold_misses": misses,
            "targets_not_met": self.options.targets.misses(tuned),
            "worse_than_base": worse_than_base,
            "baseline": str(self.options.baseline) if self.options.baseline else None,
            "comparison": comparison.to_dict() if comparison else None,
        }


class ModelUnavailable(Exception):
    """A model role could not be loaded; every test of that role reports this one message."""


def _train_log(adapter: Path | None) -> list[dict]:
    path = Path(adapter) / "train_log.jsonl" if adapter else None
    if not path or not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def write_summary(summary: dict, report_dir: Path) -> Path:
    """Write reports/<run_id>/summary.json atomically; returns the run folder."""
    folder = Path(report_dir) / summary["run_id"]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".summary.{time.time_ns()}.tmp"
    tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    tmp.replace(folder / "summary.json")
    return folder
