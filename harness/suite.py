"""The evaluation suite behind the pytest plugin: options, scenario sets, verdict policy and the
machine-readable summary of a run. The plugin module only wires these into pytest's hooks."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from harness.atomic import write_atomic
from harness.checks import run_checks
from harness.environment import versions
from harness.evaluation import Evaluation, Outcome, evaluate_output
from harness.gate import Comparison, Thresholds, compare, meets
from harness.grammar import DECODINGS
from harness.models import QUANTIZATIONS, Backend, FakeBackend, GenerationSettings, ModelSpec, load_backend
from harness.openai_backend import HTTPOptions
from harness.property_search import SearchResult, search
from harness.scoring import score_case
from harness.settings import REFERENCE_ADAPTER
from scenarios import profiles
from scenarios.curated import CURATED, SEED
from scenarios.notes import Case
from scenarios.splits import generate_split
from scenarios.strategies import clinical_cases

# The model each role loads: the prompted role is the base model with the engineered zero-shot prompt.
MODEL_OF = {"base": "base", "prompted": "base", "tuned": "tuned"}
SCENARIO_SETS = ("seed", "curated", "test")
# Metrics on which the tuned model must be at least as good as the base model.
NOT_WORSE_METRICS = ("json_valid", "schema_valid", "resource_type", "no_invented_keys", "null_age",
                     "stated_age", "dose_split", "med_count", "field_f1", "grounded")


# The base numerics a variant's name leaves unsaid: the training numerics of a QLoRA adapter, and
# what every summary recorded before numerics became a variant of their own.
DEFAULT_QUANTIZATION = "nf4"


@dataclass(frozen=True)
class Variant:
    """A model role decoded one way on one base numerics: each is generated, scored and reported on its own."""

    role: str
    decoding: str
    quantization: str = DEFAULT_QUANTIZATION

    @property
    def _numerics(self) -> str:
        return "" if self.quantization == DEFAULT_QUANTIZATION else self.quantization

    @property
    def name(self) -> str:
        """Its key in summaries and reports, e.g. 'tuned:grounded', or 'tuned:free@none' off NF4."""
        return f"{self.role}:{self.decoding}" + (f"@{self._numerics}" if self._numerics else "")

    @property
    def id(self) -> str:
        """Its part of test ids, e.g. 'tuned-grounded', or 'tuned-free-none' off NF4."""
        return f"{self.role}-{self.decoding}" + (f"-{self._numerics}" if self._numerics else "")


@dataclass(frozen=True)
class SuiteOptions:
    """What a suite run evaluates; built from pytest options and validated here."""

    base_model: str = "embedded"
    adapter: Path | str | None = REFERENCE_ADAPTER  # a LoRA folder, or a served adapter (openai:NAME)
    # Base numerics the tuned model is evaluated under, each its own variant; the base and prompted
    # roles run under the first (the point of comparison, not the thing deployed).
    quantizations: tuple[str, ...] = (DEFAULT_QUANTIZATION,)
    gate_quantizations: tuple[str, ...] = (DEFAULT_QUANTIZATION,)  # those the adapter will be served with
    scenario_sets: tuple[str, ...] = SCENARIO_SETS
    test_split_size: int = 100
    baseline: Path | None = None
    thresholds: Mapping[str, Thresholds] = field(default_factory=dict)  # the gate's floors, per decoding mode
    targets: Thresholds = field(default_factory=Thresholds)  # the quality aimed at: reported, never failing
    report_dir: Path = Path("reports")
    cache: bool = True
    settings: GenerationSettings = field(default_factory=GenerationSettings)  # its decoding is replaced per variant
    decodings: tuple[str, ...] = ("free", "grounded")  # the tuned model is evaluated under each
    # The base model as the study prompts it is the point of comparison; constraining it too is a
    # measurement of its own (each base mode costs a full pass of long, mostly chatty answers).
    base_decodings: tuple[str, ...] = ("free",)
    prompted_decodings: tuple[str, ...] = ("free",)  # the base model, zero-shot with harness.prompt's engineered prompt
    gate_decodings: tuple[str, ...] = ("free", "grounded")  # the tuned variants the gate judges
    # A JSON {role: {note: output}} file (a key "tuned@none" scripts one numerics): scripted backends, no model.
    fake_outputs: Path | None = None
    http: HTTPOptions = field(default_factory=HTTPOptions)  # for served models (openai:MODEL@URL)

    def floors(self, decoding: str) -> Thresholds:
        """The gate's floors for a decoding mode (the targets where none are configured)."""
        return self.thresholds.get(decoding, Thresholds())

    def __post_init__(self):
        unknown = sorted(set(self.scenario_sets) - set(SCENARIO_SETS))
        if unknown:
            raise ValueError(f"unknown scenario set(s) {unknown}; choose from {', '.join(SCENARIO_SETS)}")
        for name, modes in (("decoding", self.decodings), ("base decoding", self.base_decodings),
                            ("prompted decoding", self.prompted_decodings), ("gate decoding", self.gate_decodings)):
            wrong = sorted(set(modes) - set(DECODINGS))
            if wrong or (not modes and name != "prompted decoding") or len(set(modes)) != len(modes):
                raise ValueError(f"{name} must list distinct modes of {', '.join(DECODINGS)}; got {list(modes)}")
        for name, kinds in (("quantization", self.quantizations), ("gate quantization", self.gate_quantizations)):
            wrong = sorted(set(kinds) - set(QUANTIZATIONS))
            if wrong or not kinds or len(set(kinds)) != len(kinds):
                raise ValueError(f"{name} must list distinct base numerics of {', '.join(QUANTIZATIONS)}; "
                                 f"got {list(kinds)}")
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
    return list(run_checks(score_case(json.dumps(case.expected), case.expected, case.note)))


def variants(options: SuiteOptions) -> list[Variant]:
    first = options.quantizations[0]
    return ([Variant("base", mode, first) for mode in options.base_decodings]
            + [Variant("prompted", mode, first) for mode in options.prompted_decodings]
            + [Variant("tuned", mode, q) for q in options.quantizations for mode in options.decodings])


def settings_for(options: SuiteOptions, variant: Variant) -> GenerationSettings:
    return replace(options.settings, decoding=variant.decoding,
                   prompt="engineered" if variant.role == "prompted" else "trained")


def base_for(options: SuiteOptions, decoding: str) -> Variant:
    """The base variant a tuned one is compared with: the same decoding where the base ran under it,
    else the base as prompted (free), else its first mode."""
    modes = options.base_decodings
    return Variant("base", decoding if decoding in modes else "free" if "free" in modes else modes[0],
                   options.quantizations[0])


def gated(options: SuiteOptions) -> list[Variant]:
    """The tuned variants the gate judges: the configured gate modes and numerics that this run evaluates."""
    return [v for v in variants(options) if v.role == "tuned" and v.decoding in options.gate_decodings
            and v.quantization in options.gate_quantizations]


def backend_factories(options: SuiteOptions) -> dict[str, Callable[[], Backend]]:
    """A loader per variant; variants of one model (every decoding, and base and prompted) share it."""
    loaded: dict[tuple[str, str], Backend] = {}
    scripts = json.loads(Path(options.fake_outputs).read_text()) if options.fake_outputs is not None else None

    def shared(role: str, quantization: str) -> Backend:
        if scripts is not None:  # a script per role, or per role and numerics ("tuned@none")
            key = (role, quantization)
            if key not in loaded:
                loaded[key] = FakeBackend(scripts.get(f"{role}@{quantization}", scripts.get(role, {})), name=role)
            return loaded[key]
        key = (MODEL_OF[role], quantization)
        if key not in loaded:
            adapter = str(options.adapter) if key[0] == "tuned" and options.adapter else None
            # Merged where that changes only the rounding of sums (the reference gate run: 0 of 238
            # answers differed) and costs less per token: 1.19x on NF4 (README, "Extracting"); attached
            # where it cannot be (NF4 on a GPU).
            spec = ModelSpec(base=options.base_model, quantization=quantization, adapter=adapter,
                             merge_adapter="auto")
            loaded[key] = load_backend(spec, options.http)
        return loaded[key]

    return {v.name: (lambda v=v: shared(v.role, v.quantization)) for v in variants(options)}


class Suite:
    """One pytest session's evaluation: scenarios, lazily generated outcomes, baseline and gate."""

    def __init__(self, options: SuiteOptions, progress=None):
        self.options = options
        self.scenarios = load_scenarios(options)
        self.variants = {v.name: v for v in variants(options)}
        settings = {v.name: settings_for(options, v) for v in self.variants.values()}
        self.evaluation = Evaluation(self.scenarios, backend_factories(options), settings,
                                     cache=options.cache, progress=progress)
        self.baseline = json.loads(Path(options.baseline).read_text()) if options.baseline else None
        self._rescored: dict[str, dict | None] = {}
        self.started = datetime.now(UTC)
        self.run_id = self.started.strftime("%Y%m%d-%H%M%S")

    # ------------------------------------------------------------------ verdicts
    def _loaded(self, variant: str):
        """The variant's run, generated on first use; ModelUnavailable when its model did not load."""
        run = self.evaluation.run(variant)
        if run.error:
            raise ModelUnavailable(f"{variant} model could not be loaded: {run.error}")
        return run

    def outcome(self, variant: str, scenario_id: str) -> Outcome:
        run = self._loaded(variant)
        return run.outcomes[scenario_id]

    def baseline_scenarios(self, variant: str) -> dict | None:
        """The baseline's per-scenario results of the same role and decoding (like with like), its
        recorded outputs scored again by today's checks, so a check added since the baseline was
        recorded judges both runs alike; how each answer ended (stopped, looped) and its time stay as
        recorded. A summary written before numerics were variants ran every
        role on its one `options.quantization`, and one written before decoding modes existed keys
        its free runs by role alone."""
        if not self.baseline:
            return None
        if variant not in self._rescored:
            roles, v = self.baseline.get("roles", {}), self.variants[variant]
            single = self.baseline.get("options", {}).get("quantization")
            if single is None:
                entry = roles.get(v.name)
            elif single != v.quantization:
                entry = None
            else:
                entry = roles.get(f"{v.role}:{v.decoding}") or (roles.get(v.role) if v.decoding == "free" else None)
            self._rescored[variant] = None if entry is None else {
                sid: evaluate_output(Case(sid, o["note"], o["expected"], tuple(o.get("tags", ()))), o["output"],
                                     o.get("error"), o.get("seconds", 0.0), o.get("cached", False),
                                     o.get("stopped", True), o.get("looped", False)).to_dict()
                for sid, o in entry["scenarios"].items()}
        return self._rescored[variant]

    def baseline_check_failed(self, variant: str, scenario_id: str, check: str) -> bool:
        scenario = (self.baseline_scenarios(variant) or {}).get(scenario_id)
        return bool(scenario) and not scenario.get("checks", {}).get(check, {}).get("ok", True)

    def metrics(self, variant: str) -> dict[str, float]:
        run = self._loaded(variant)
        return run.aggregate().metrics()

    def property_search(self, variant: str) -> SearchResult:
        """Hypothesis-drawn notes of held-out concepts through the variant's model, drawn in one batch,
        a failure shrunk within the profile's budget; its cost and minimal failure go in the summary."""
        run = self._loaded(variant)
        result = search(self.evaluation, variant, clinical_cases(), profiles.model_examples(),
                        profiles.shrink_budget(), self.evaluation.progress)
        failure = result.minimal_failure
        run.extra = {"stats": result.stats.to_dict(), "minimal_failure": failure.to_dict() if failure else None}
        return result

    def compare_with_baseline(self, variant: str) -> Comparison | None:
        old = self.baseline_scenarios(variant)
        if old is None:
            return None
        new = {k: v.to_dict() for k, v in self.evaluation.run(variant).outcomes.items()}
        return compare(new, old)

    # ------------------------------------------------------------------ summary
    def summary(self, complete: bool) -> dict:
        roles = {}
        for name, run in self.evaluation.runs.items():
            agg = run.aggregate() if run.outcomes else None
            roles[name] = {
                "role": self.variants[name].role,
                "decoding": self.variants[name].decoding,
                "quantization": self.variants[name].quantization,
                "identity": run.identity,
                "error": run.error,
                "seconds": round(run.seconds, 1),
                "metrics": agg.metrics() if agg else {},
                "fields": agg.to_dict()["fields"] if agg else {},
                "scenarios": {k: v.to_dict() for k, v in run.outcomes.items()},
                "hypothesis": run.extra,
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
                "quantizations": list(self.options.quantizations),
                "gate_quantizations": list(self.options.gate_quantizations),
                "scenario_sets": list(self.options.scenario_sets),
                "test_split_size": self.options.test_split_size,
                "baseline": str(self.options.baseline) if self.options.baseline else None,
                "decodings": list(self.options.decodings),
                "base_decodings": list(self.options.base_decodings),
                "prompted_decodings": list(self.options.prompted_decodings),
                "gate_decodings": list(self.options.gate_decodings),
            },
            "generation_settings": {name: s.to_dict() for name, s in self.evaluation.settings.items()},
            "thresholds": {mode: asdict(self.options.floors(mode)) for mode in self.options.gate_decodings},
            "targets": asdict(self.options.targets),
            "versions": versions(),
            "roles": roles,
            "gate": self.gate_summary(),
            "train_log": _train_log(self.options.adapter),
        }

    def gate_summary(self) -> dict | None:
        """The gate's verdict over every gated tuned variant that ran: each is held to the floors, to
        the base model under the same decoding, and to the baseline's run of the same variant."""
        judged = {}
        for v in gated(self.options):
            run = self.evaluation.runs.get(v.name)
            if run is None or not run.outcomes:
                continue
            tuned = run.aggregate().metrics()
            misses = self.options.floors(v.decoding).misses(tuned)
            comparison = self.compare_with_baseline(v.name)
            base_variant = base_for(self.options, v.decoding).name
            base = self.evaluation.runs.get(base_variant)
            worse_than_base = {}
            if base is not None and base.outcomes:
                b = base.aggregate().metrics()
                worse_than_base = {m: (tuned[m], b[m]) for m in NOT_WORSE_METRICS if not meets(m, tuned[m], b[m])}
            judged[v.name] = {
                "passed": not misses and not (comparison and comparison.worse) and not worse_than_base,
                "threshold_misses": misses,
                "targets_not_met": self.options.targets.misses(tuned),
                "worse_than_base": worse_than_base,
                "base": base_variant,
                "comparison": comparison.to_dict() if comparison else None,
            }
        if not judged:
            return None
        return {
            "passed": all(j["passed"] for j in judged.values()),
            "baseline": str(self.options.baseline) if self.options.baseline else None,
            "variants": judged,
        }


class ModelUnavailable(Exception):
    """A model role could not be loaded; every test of that role reports this one message."""


def _train_log(adapter: Path | str | None) -> list[dict]:
    path = Path(adapter) / "train_log.jsonl" if isinstance(adapter, Path) else None
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
    write_atomic(folder / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    return folder
