"""Running scenarios through models: each (model, scenario) is generated once, batched and cached,
scored once, and every check reads that one outcome."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from harness.checks import Verdict, run_checks
from harness.errors import HarnessError
from harness.generation import Generator, Result
from harness.models import Backend, GenerationSettings
from harness.scoring import Aggregate, CaseScore, aggregate, score_case
from scenarios.notes import Case


@dataclass(frozen=True)
class Outcome:
    case: Case
    output: str | None
    error: str | None
    seconds: float
    cached: bool
    stopped: bool
    score: CaseScore
    verdicts: dict[str, Verdict]
    looped: bool = False  # the model repeated itself and was stopped there (harness.decoding.repeats)

    @property
    def passed(self) -> bool:
        return self.error is None and all(v.ok for v in self.verdicts.values())

    def to_dict(self) -> dict:
        return {
            "id": self.case.id, "note": self.case.note, "tags": list(self.case.tags),
            "expected": self.case.expected, "output": self.output, "error": self.error,
            "seconds": round(self.seconds, 3), "cached": self.cached, "stopped": self.stopped,
            "looped": self.looped, "passed": self.passed, "f1": self.score.f1,
            "checks": {k: {"ok": v.ok, "reason": "" if v.ok else v.reason} for k, v in self.verdicts.items()},
        }


def evaluate_output(case: Case, output: str | None, error: str | None = None, seconds: float = 0.0,
                    cached: bool = False, stopped: bool = True, looped: bool = False) -> Outcome:
    score = score_case(output if output is not None else "", case.expected, case.note)
    return Outcome(case, output, error, seconds, cached, stopped, score, run_checks(score), looped)


def evaluate_result(case: Case, res: Result) -> Outcome:
    """A generator's result for `case` (no generation: its error) scored."""
    gen = res.generation
    if gen is None:
        return evaluate_output(case, None, res.error, stopped=False)
    return evaluate_output(case, gen.text, res.error, gen.seconds, gen.cached, gen.stopped, gen.looped)


@dataclass(frozen=True)
class SplitScore:
    """A backend's answers to a list of cases, scored as a whole (no checks, no cache): what the
    benchmarks and the training's numerics check record."""

    metrics: dict[str, float]
    tokens: int
    errors: int
    seconds: float


def score_split(backend: Backend, cases: list[Case],
                settings: GenerationSettings = GenerationSettings(decoding="free")) -> SplitScore:
    t0 = time.perf_counter()
    results = Generator(backend, settings, cache=None).run([c.note for c in cases])
    seconds = time.perf_counter() - t0
    scores = [score_case(r.generation.text, c.expected, c.note) for r, c in zip(results, cases, strict=True)]
    return SplitScore(aggregate(scores).metrics(), sum(r.generation.new_tokens for r in results),
                      sum(bool(r.generation.error) for r in results), seconds)


@dataclass
class RoleRun:
    """One model role's results, or why it could not run."""

    identity: dict = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    extra: dict | None = None  # the property search: its cost and minimal failing note (harness.property_search)
    drawn: dict[str, Result] = field(default_factory=dict)  # extra notes generated ahead, in one batch
    error: str | None = None
    seconds: float = 0.0
    generator: Generator | None = None

    def aggregate(self) -> Aggregate:
        return aggregate([o.score for o in self.outcomes.values()])


class Evaluation:
    """Lazily loads each role's backend and runs all scenarios through it in one batched pass.

    `backends` maps a name (a role, or a role under one decoding) to its loader; `settings` gives
    the generation settings of each name, or one for all."""

    def __init__(self, scenarios: list[Case], backends: dict[str, Callable[[], Backend]],
                 settings: Mapping[str, GenerationSettings] | GenerationSettings = GenerationSettings(),
                 cache: bool = True, progress: Callable[[str], None] | None = None):
        ids = [c.id for c in scenarios]
        if len(set(ids)) != len(ids):
            raise ValueError("scenario ids must be unique")
        if isinstance(settings, GenerationSettings):
            settings = dict.fromkeys(backends, settings)
        self.scenarios, self.factories, self.settings, self.cache = scenarios, backends, dict(settings), cache
        self.progress = progress or (lambda msg: None)
        self.runs: dict[str, RoleRun] = {}

    @property
    def roles(self) -> list[str]:
        return list(self.factories)

    def run(self, role: str) -> RoleRun:
        if role in self.runs:
            return self.runs[role]
        run = self.runs[role] = RoleRun()
        t0 = time.perf_counter()
        try:
            backend = self.factories[role]()
            run.identity = dict(backend.identity)
            run.generator = Generator(backend, self.settings[role], cache=self.cache)
            notes = [c.note for c in self.scenarios]
            done = [0]

            def tick(n):
                done[0] += n
                self.progress(f"{role}: {done[0]}/{len(notes)} scenarios generated")

            results = run.generator.run(notes, on_done=tick)
        except HarnessError as exc:
            run.error = str(exc)
            return run
        for case, res in zip(self.scenarios, results, strict=True):
            run.outcomes[case.id] = evaluate_result(case, res)
        run.seconds = time.perf_counter() - t0
        return run

    def prefetch(self, role: str, notes: list[str]) -> None:
        """Generate extra notes (hypothesis-drawn) in one batched pass, for evaluate_extra to find."""
        run = self._loaded(role)
        todo = list(dict.fromkeys(n for n in notes if n not in run.drawn))
        run.drawn.update(zip(todo, run.generator.run(todo), strict=True))

    def has_generated(self, role: str, note: str) -> bool:
        return note in self._loaded(role).drawn

    def evaluate_extra(self, role: str, case: Case) -> Outcome:
        """One extra case through the role's model and cache (or the batch prefetch left for it)."""
        run = self._loaded(role)
        res = run.drawn.get(case.note) or run.generator.run([case.note])[0]
        run.drawn[case.note] = res
        return evaluate_result(case, res)

    def _loaded(self, role: str) -> RoleRun:
        run = self.run(role)
        if run.error:
            raise HarnessError(run.error)
        return run
