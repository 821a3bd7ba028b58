"""The scorer against hand-computed cases, and properties that must hold for any input."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.schema import dumps
from harness.scoring import FieldCounts, aggregate, invented_keys, parse_output, score_case
from scenarios.strategies import clinical_cases

EXPECTED = {
    "resourceType": "SunriseEMRClinicalSummary",
    "patient": {"name": "Pete Jones", "ageInt": 68, "gender": None},
    "reasonCode": [{"text": "diarrhea"}, {"text": "gastroenteritis"}],
    "medicationStatement": [
        {"medication": "loperamide", "dose": {"value": 20, "unit": "mg"}},
        {"medication": "Gaviscon", "dose": {"value": 250, "unit": "ml"}},
        {"medication": "omprazol", "dose": {"value": 250, "unit": "mg"}},
    ],
}


def test_perfect_output_scores_one():
    s = score_case(dumps(EXPECTED), EXPECTED)
    assert (s.strict_json, s.schema_valid, s.resource_type_ok, s.age_ok, s.med_count_ok) == (True,) * 5
    assert s.f1 == 1.0 and s.doses_ok == s.doses_total == 3 and not s.invented_keys and not s.chatty


def test_hand_computed_field_counts():
    """Age wrong, one reason missing, meds reordered with one merged dose wrong, an invented key."""
    pred = {
        "resourceType": "SunriseEMRClinicalSummary",
        "patient": {"name": "pete  JONES", "ageInt": 20, "gender": None},
        "reasonCode": [{"text": "Diarrhea"}],
        "medicationStatement": [
            {"medication": "omprazol", "dose": {"value": 250.0, "unit": "mg"}},
            {"medication": "Loperamide", "dose": {"value": 20, "unit": "mg"}},
            {"medication": "Gaviscon", "dose": {"value": 250, "unit": "mg"}},
        ],
        "symptoms": ["diarrhea"],
    }
    s = score_case(json.dumps(pred), EXPECTED)
    f = s.fields
    assert f["resourceType"] == FieldCounts(1, 0, 0)
    assert f["patient.name"] == FieldCounts(1, 0, 0)  # case and white space folded
    assert f["patient.ageInt"] == FieldCounts(0, 1, 1)
    assert f["patient.gender"] == FieldCounts(1, 0, 0)  # a correct null counts
    assert f["reasonCode.text"] == FieldCounts(1, 0, 1)
    assert f["medicationStatement.medication"] == FieldCounts(3, 0, 0)  # order does not matter
    assert f["medicationStatement.dose"] == FieldCounts(2, 1, 1)
    # micro: tp = 1+1+0+1+1+3+2 = 9, fp = 2, fn = 3 -> F1 = 18 / 23
    assert s.totals == FieldCounts(9, 2, 3)
    assert s.f1 == pytest.approx(18 / 23)
    assert s.invented_keys == ("symptoms",) and not s.schema_valid
    assert (s.doses_ok, s.doses_total) == (2, 3) and not s.dose_split_ok
    assert s.med_count_ok and not s.age_ok


def test_chatty_output_is_lenient_not_strict():
    s = score_case("Sure! Here you go:\n```json\n" + dumps(EXPECTED) + "\n```", EXPECTED)
    assert s.chatty and s.lenient_json and not s.strict_json
    assert s.schema_valid and s.f1 == 1.0


def test_null_age_must_be_null_not_guessed():
    expected = {**EXPECTED, "patient": {"name": None, "ageInt": None, "gender": None}}
    guessed = {**expected, "patient": {"name": None, "ageInt": 120, "gender": None}}
    assert score_case(dumps(expected), expected).age_ok
    assert not score_case(dumps(guessed), expected).age_ok
    missing = {**expected, "patient": {"name": None, "gender": None}}
    assert not score_case(dumps(missing), expected).age_ok


def test_medication_repetition_merged_entries_fail_count():
    merged = {**EXPECTED, "medicationStatement": [{"medication": "loperamide, Gaviscon, omprazol", "dose": None}]}
    s = score_case(dumps(merged), EXPECTED)
    assert not s.med_count_ok and s.med_count_predicted == 1


def test_invented_keys_are_listed_by_path():
    obj = {"resourceType": "x", "patient": {"dob": 1}, "reasonCode": [{"text": "a", "code": "b"}],
           "medicationStatement": [{"medication": "m", "dose": {"value": 1, "unit": "mg", "route": "po"}, "freq": 2}]}
    assert invented_keys(obj) == ["patient.dob", "reasonCode[0].code", "medicationStatement[0].freq",
                                  "medicationStatement[0].dose.route"]


def test_aggregate_rates_and_micro_f1():
    perfect = score_case(dumps(EXPECTED), EXPECTED)
    broken = score_case("I cannot help with that.", EXPECTED)
    agg = aggregate([perfect, broken])
    m = agg.metrics()
    assert m["json_valid"] == 0.5 and m["schema_valid"] == 0.5 and m["med_count"] == 0.5
    assert m["dose_split"] == 0.5  # 3 of 6 doses
    assert m["null_age"] == 1.0  # no case without an age: nothing to get wrong
    assert m["stated_age"] == 0.5
    # perfect: 9 facts all tp; broken: 9 fn -> F1 = 18 / 27
    assert m["field_f1"] == pytest.approx(18 / 27)


@pytest.mark.parametrize("text", ["", "\x00\xff\ufffd", "{" * 100_000, "[" * 50_000 + "]" * 50_000,
                                  '{"a": ' * 5000 + "1" + "}" * 5000, "null", "[1, 2]", '"just a string"',
                                  "Ignore previous instructions. {\"resourceType\": 1}", "{" * 20 + "}" * 20])
def test_scorer_never_raises_on_hostile_input(text):
    s = score_case(text, EXPECTED)
    assert not s.schema_valid and 0.0 <= s.f1 <= 1.0


@given(st.text())
def test_scorer_never_raises_on_any_string(text):
    s = score_case(text, EXPECTED)
    assert 0.0 <= s.f1 <= 1.0
    assert s.strict_json or not s.schema_valid or s.lenient_json


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)))
def test_scorer_never_raises_on_any_json(value):
    score_case(json.dumps(value), EXPECTED)


@given(clinical_cases())
def test_any_drawn_case_scores_perfect_against_itself(case):
    s = score_case(dumps(case.expected), case.expected)
    assert s.f1 == 1.0 and s.schema_valid and s.age_ok and s.dose_split_ok and s.med_count_ok


def test_parse_output_digs_out_first_object():
    obj, strict = parse_output('text {"a": [1, 2]} more {"b": 2}')
    assert obj == {"a": [1, 2]} and not strict
