"""Scoring a backend's answers to a split as a whole (what benchmarks and the training's numerics check record)."""

import pytest

from harness.evaluation import score_split
from harness.models import FakeBackend
from harness.schema import dumps
from scenarios.curated import SEED


def test_score_split_scores_every_answer_and_counts_tokens():
    cases = list(SEED[:3])
    answers = {cases[0].note: dumps(cases[0].expected), cases[1].note: dumps(cases[1].expected),
               cases[2].note: "Sure! Here is the summary."}
    run = score_split(FakeBackend(answers), cases)
    assert run.metrics["json_valid"] == pytest.approx(2 / 3) and run.metrics["schema_valid"] == pytest.approx(2 / 3)
    assert 0 < run.metrics["field_f1"] < 1  # the third case's fields are all missed
    assert run.tokens == sum(len(a.split()) for a in answers.values()) and run.errors == 0 and run.seconds >= 0
