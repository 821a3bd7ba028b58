"""The note generator: every drawn case carries its own correct truth."""

import re

from hypothesis import given

from harness.schema import schema_errors
from scenarios import CURATED, HELD_OUT, SEED, TRAIN
from scenarios.notes import dictate, number_words
from scenarios.strategies import clinical_cases


def _mentions(note: str, text: str) -> bool:
    return text.casefold() in note.casefold()


@given(clinical_cases())
def test_expected_summary_is_valid_and_true_to_the_note(case):
    exp = case.expected
    assert schema_errors(exp) == []
    note = case.note
    if exp["patient"]["name"]:
        assert exp["patient"]["name"] in note  # as written, labels left out
        assert not exp["patient"]["name"].lower().startswith(("pt ", "patient ", "name", "mr ", "ms "))
    for reason in exp["reasonCode"]:
        assert reason["text"] in note
    texts = [r["text"] for r in exp["reasonCode"]]
    assert len(texts) == len(set(texts))  # no duplicates
    positions = [note.index(t) for t in texts]
    meds = [m["medication"] for m in exp["medicationStatement"]]
    assert [note.index(m) for m in meds] == sorted(note.index(m) for m in meds)
    assert positions == sorted(positions)  # in order of first mention
    age = exp["patient"]["ageInt"]
    if age is None:
        return
    assert str(age) in note or number_words(age) in note


@given(clinical_cases(TRAIN))
def test_training_vocabulary_cases_are_valid_too(case):
    assert schema_errors(case.expected) == []


def test_no_age_means_no_age_pattern_in_note():
    from scenarios.splits import generate_split

    age_pattern = re.compile(r"\b\d+\s*(y|yo|yrs|-year-old)\b|\baged \d+|\bage: \d+|year old")
    for case in generate_split("train", 300) + generate_split("test", 100):
        has_pattern = bool(age_pattern.search(case.note))
        if case.expected["patient"]["ageInt"] is None:
            assert not has_pattern, case.note


def test_dictation_lowercases_and_keeps_decimals():
    assert dictate("Pt John Doe, 55y. Rx: Bisoprolol 2.5 mg.") == "pt john doe 55y rx bisoprolol 2.5 mg"


def test_number_words():
    assert [number_words(n) for n in (7, 13, 40, 68, 95)] == ["seven", "thirteen", "forty", "sixty eight",
                                                              "ninety five"]


def test_curated_and_seed_expectations_are_schema_valid_and_unique():
    cases = SEED + CURATED
    assert all(schema_errors(c.expected) == [] for c in cases)
    assert len({c.id for c in cases}) == len(cases)
    assert len(SEED) == 5


def test_vocabularies_are_disjoint():
    for kind, terms in TRAIN.terms().items():
        assert not {t.casefold() for t in terms} & {t.casefold() for t in HELD_OUT.terms()[kind]}, kind
