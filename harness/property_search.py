"""The model-facing property test's engine: hypothesis-drawn notes, generated in one batch, and a
failure shrunk within a time budget.

Every example costs a generation, and one at a time a weak model spends minutes on them. So the
examples are first drawn without a model (the same seeded search, with a body that only records
what it is given), generated together in one batched pass, and then judged by the real search,
which finds them already generated. Shrinking generates one note at a time: a note not yet generated
counts as passing once generating it would end more than `shrink_budget` seconds after the first
failure (judged by how long the last such generation took), so the shrinker stops at the smallest
failing note found so far, within its budget: a real, reproducible failure, only perhaps not the
smallest one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from harness.evaluation import Evaluation, Outcome
from scenarios.notes import Case

# A fixed seed: the collecting pass and the judging pass must draw the same notes.
SEED = 20261128
# Each example is a generation: slow, and every draw counts.
SLOW_BY_DESIGN = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


@dataclass
class SearchStats:
    """What the search cost; recorded in the summary and shown in the report."""

    examples: int = 0  # notes judged: drawn ones and shrinking attempts
    batched: int = 0  # drawn up front and generated in one batched pass
    generated_singly: int = 0  # generated one at a time while searching or shrinking
    skipped: int = 0  # shrinking attempts not generated: past the shrink budget
    batch_seconds: float = 0.0
    seconds: float = 0.0  # the whole search, the batch included
    shrink_seconds: float = 0.0  # from the first failure to the end
    shrink_budget: float = 0.0
    budget_hit: bool = False

    def to_dict(self) -> dict:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self) -> str:
        text = (f"{self.examples} notes judged ({self.batched} drawn and generated in one batch in "
                f"{self.batch_seconds:.0f} s, {self.generated_singly} one at a time), {self.seconds:.0f} s")
        if self.shrink_seconds:
            text += f"; shrinking {self.shrink_seconds:.0f} s of a {self.shrink_budget:.0f} s budget"
            if self.budget_hit:
                text += f" (budget spent: {self.skipped} smaller notes left untried)"
        return text


@dataclass
class SearchResult:
    stats: SearchStats
    minimal_failure: Outcome | None  # the smallest failing note found, None when every note passed

    @property
    def message(self) -> str | None:
        if self.minimal_failure is None:
            return None
        o = self.minimal_failure
        failed = {k: v.reason for k, v in o.verdicts.items() if not v.ok}
        return f"note {o.case.note!r}: {failed or o.error}"


def search(evaluation: Evaluation, variant: str, strategy: st.SearchStrategy[Case], max_examples: int,
           shrink_budget: float, progress: Callable[[str], None] = lambda message: None) -> SearchResult:
    """Draw up to `max_examples` cases, judge `variant`'s answer to each by every check, and shrink a
    failure for at most `shrink_budget` seconds. The model must load (evaluation.run(variant))."""
    stats = SearchStats(shrink_budget=shrink_budget)
    seen: dict[str, Outcome] = {}  # by note and truth: a replayed note gets the same verdict
    drawn: list[Case] = []
    state = {"collect": True, "first_failure": None, "minimal": None, "single_seconds": 0.0}
    t0 = time.monotonic()

    def judge(case: Case) -> None:
        if state["collect"]:
            drawn.append(case)
            return
        key = json.dumps([case.note, case.expected], sort_keys=True)
        outcome = seen.get(key)
        if outcome is None:
            started = state["first_failure"]
            # A generation is not started when, as long as the last one took, it would end past the budget.
            if started is not None and time.monotonic() - started + state["single_seconds"] > shrink_budget:
                stats.skipped += 1
                stats.budget_hit = True
                return
            batched = evaluation.has_generated(variant, case.note)
            g0 = time.monotonic()
            outcome = seen[key] = evaluation.evaluate_extra(variant, case)
            if not batched:
                stats.generated_singly += 1
                state["single_seconds"] = time.monotonic() - g0
        stats.examples += 1
        if not outcome.passed:
            state["first_failure"] = state["first_failure"] or time.monotonic()
            state["minimal"] = outcome
            raise AssertionError(key)

    run = seed(SEED)(settings(max_examples=max_examples, database=None, deadline=None, report_multiple_bugs=False,
                              suppress_health_check=SLOW_BY_DESIGN)(given(case=strategy)(judge)))
    run()  # collect: no model, the notes only
    state["collect"] = False
    progress(f"{variant}: hypothesis drew {len(drawn)} notes; generating them in one batch")
    b0 = time.monotonic()
    evaluation.prefetch(variant, [c.note for c in drawn])
    stats.batched, stats.batch_seconds = len({c.note for c in drawn}), time.monotonic() - b0
    with contextlib.suppress(AssertionError):  # hypothesis re-raises the minimal failure, already recorded
        run()
    stats.seconds = time.monotonic() - t0
    if state["first_failure"] is not None:
        stats.shrink_seconds = time.monotonic() - state["first_failure"]
    progress(f"{variant}: hypothesis {stats.line()}")
    return SearchResult(stats, state["minimal"])
