"""The property search behind the model-facing hypothesis test: drawn notes generated in one batch,
a failure shrunk to the smallest failing note within a time budget."""

import re

from hypothesis import strategies as st

from harness.evaluation import Evaluation
from harness.models import FakeBackend
from harness.property_search import search
from harness.schema import dumps
from scenarios import SEED
from scenarios.notes import Case

CASES = sorted(SEED, key=lambda c: len(c.note))
NUMBERED = st.integers(0, 10**6).map(lambda i: _numbered(i))


def _evaluation():
    backend = FakeBackend({c.note: dumps(c.expected) for c in CASES})
    return Evaluation(CASES, {"tuned:free": lambda: backend}, cache=False), backend


def test_drawn_notes_are_generated_in_one_batch_and_pass():
    evaluation, backend = _evaluation()
    evaluation.run("tuned:free")
    backend.calls.clear()
    result = search(evaluation, "tuned:free", st.sampled_from(CASES), max_examples=10, shrink_budget=60)
    assert result.minimal_failure is None and result.message is None
    assert len(backend.calls) == 1  # one batched pass; the judging search found every note generated
    drawn = set(backend.calls[0])
    assert result.stats.batched == len(drawn) > 1 and result.stats.generated_singly == 0
    assert result.stats.examples >= len(drawn) and not result.stats.shrink_seconds


def _numbered(i: int) -> Case:
    base = CASES[0]
    return Case(f"n{i}", f"{base.note} Ref {i}.", base.expected)


def _fails_from_100():
    """Notes numbered 100 and up are answered with chatter: the smallest failing note is number 100."""
    def answer(note):
        number = int(re.search(r"Ref (\d+)", note).group(1))
        return ("Sure! " if number >= 100 else "") + dumps(CASES[0].expected)
    backend = FakeBackend(answer)
    return Evaluation([], {"tuned:free": lambda: backend}, cache=False), backend


def test_a_failure_shrinks_to_the_smallest_failing_note():
    evaluation, _ = _fails_from_100()
    result = search(evaluation, "tuned:free", NUMBERED, max_examples=20, shrink_budget=60)
    assert result.minimal_failure.case.note == _numbered(100).note
    assert "no_chatter" in result.message and "Ref 100." in result.message
    assert result.stats.shrink_seconds > 0 and result.stats.generated_singly > 0 and not result.stats.budget_hit


def test_past_the_shrink_budget_untried_notes_count_as_passing_and_the_failure_stays_real():
    evaluation, backend = _fails_from_100()
    result = search(evaluation, "tuned:free", NUMBERED, max_examples=20, shrink_budget=0)
    failure = result.minimal_failure
    assert failure is not None and not failure.passed and failure.case.note != _numbered(100).note
    assert failure.case.note in {n for call in backend.calls for n in call}  # a real generation's verdict
    assert result.stats.budget_hit and result.stats.skipped > 0 and "budget spent" in result.stats.line()


def test_shrinking_starts_no_generation_that_would_end_past_its_budget(monkeypatch):
    """Each one-at-a-time generation takes 10 s of a fake clock: with a 25 s budget the shrinker generates
    two notes after the first failure, not a third that would end at 30 s."""
    clock = [0.0]
    monkeypatch.setattr("harness.property_search.time.monotonic", lambda: clock[0])
    evaluation, backend = _fails_from_100()
    answer = backend.outputs

    def slow(note):
        clock[0] += 10.0
        return answer(note)

    backend.outputs = slow
    result = search(evaluation, "tuned:free", NUMBERED, max_examples=20, shrink_budget=25)
    stats = result.stats
    assert stats.budget_hit and stats.skipped > 0 and not result.minimal_failure.passed
    assert stats.shrink_seconds <= 25
    assert stats.shrink_seconds == 10.0 * stats.generated_singly == 20.0
