"""The grounding check on hand-made outputs: what counts as coming from the note, and what does not."""

import pytest

from harness.grounding import fold, ground_summary, note_numbers, note_segments
from harness.schema import RESOURCE_TYPE


def _summary(name=None, age=None, gender=None, reasons=(), meds=()):
    return {"resourceType": RESOURCE_TYPE, "patient": {"name": name, "ageInt": age, "gender": gender},
            "reasonCode": [{"text": r} for r in reasons],
            "medicationStatement": [{"medication": m, "dose": d} for m, d in meds]}


def _ungrounded(summary, note):
    return {g.path: g.reason for g in ground_summary(summary, note) if not g.grounded}


NOTE = "Pt John Doe, 55y, history of T2DM, BP 130/85, temp 38.9C. Meds: Amoicillin 500mg and ASPIRIN 75 MG."


@pytest.mark.parametrize("summary", [
    _summary(name="john doe"),  # another case
    _summary(name="  John   Doe "),  # white space folded and stripped
    _summary(meds=[("Amoicillin", None)]),  # a misspelt drug copied verbatim
    _summary(meds=[("aspirin", {"value": 75, "unit": "mg"})]),
    _summary(reasons=["history of T2DM"]),  # any span at word boundaries
    _summary(age=55),
    _summary(meds=[("Amoicillin", {"value": 500.0, "unit": "mg"})]),  # 500.0 is the note's 500
    _summary(),  # nulls claim nothing
], ids=["case", "white-space", "misspelling-copied", "upper-case-drug", "span", "age", "float-dose", "nulls"])
def test_grounded(summary):
    assert _ungrounded(summary, NOTE) == {}


@pytest.mark.parametrize("summary, path", [
    (_summary(meds=[("Amoxicillin", None)]), "medicationStatement[0].medication"),  # autocorrected
    (_summary(meds=[("Ampicillin", None)]), "medicationStatement[0].medication"),
    (_summary(name="John Do"), "patient.name"),  # stops inside a word
    (_summary(name="ohn Doe"), "patient.name"),  # starts inside a word
    (_summary(reasons=["T2DM BP"]), "reasonCode[0].text"),  # punctuation is not folded
    (_summary(age=54), "patient.ageInt"),  # a guessed age
    (_summary(age=2), "patient.ageInt"),  # the 2 of T2DM is part of a name, not a number
    (_summary(meds=[("Amoicillin", {"value": 250, "unit": "mg"})]), "medicationStatement[0].dose.value"),
    (_summary(meds=[("Amoicillin", {"value": 500, "unit": "milligrams"})]), "medicationStatement[0].dose.unit"),
    (_summary(gender="other"), "patient.gender"),
    (_summary(name=12), "patient.name"),  # not text
], ids=["autocorrected", "another-drug", "word-cut-at-end", "word-cut-at-start", "punctuation", "guessed-age",
        "digit-in-a-name", "dose", "unit", "gender", "type"])
def test_ungrounded(summary, path):
    assert list(_ungrounded(summary, NOTE)) == [path]


def test_a_word_inside_another_word_is_not_grounded():
    assert _ungrounded(_summary(reasons=["ash"]), "Pt has a rash.") == {"reasonCode[0].text": "not in the note"}
    assert _ungrounded(_summary(reasons=["rash"]), "Pt has a rash.") == {}


def test_numbers_that_are_not_the_age_are_still_numbers_of_the_note():
    """Grounding says where a value comes from, not whether it is right: the BP is in the note (the
    age check is what catches it as an age)."""
    assert _ungrounded(_summary(age=130), NOTE) == {}
    assert [n.value for n in note_numbers(NOTE)] == [55, 130, 85, 38.9, 500, 75]


@pytest.mark.parametrize("note, age", [
    ("pt oleg novak fifty five year old reports pneumonia", 55),
    ("aged sixty-one", 61),
    ("one hundred and two years old", 102),
    ("ninety year old woman", 90),
    ("nineteen yo", 19),
])
def test_ages_in_words(note, age):
    assert _ungrounded(_summary(age=age), note) == {}
    assert _ungrounded(_summary(age=age + 1), note) == {"patient.ageInt": "the note states no such number"}


def test_folding_maps_back_to_the_original_note():
    folded, origin = fold("  Ｊohn\n\tDOE ")  # a full-width J, mixed case, inner white space
    assert folded == "john doe" and origin[0] == 2 and origin[-1] == 10
    groundings = ground_summary(_summary(name="john doe", reasons=["T2DM"]), NOTE)
    segments = note_segments(NOTE, groundings)
    assert "".join(s["text"] for s in segments) == NOTE
    assert [(s["text"], s["paths"]) for s in segments if s["paths"]] == [
        ("John Doe", ["patient.name"]), ("T2DM", ["reasonCode[0].text"])]


def test_malformed_summaries_never_raise():
    for obj in (None, [], "x", {"patient": "x", "reasonCode": "y", "medicationStatement": [1, {"dose": 5}]}):
        ground_summary(obj, NOTE)
