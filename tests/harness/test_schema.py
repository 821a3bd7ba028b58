"""Schema v1 accepts the contract and rejects each broken rule."""

import copy
import json

import pytest

from harness.schema import RESOURCE_TYPE, SCHEMA, dumps, empty_summary, is_valid, schema_errors, validate_text

GOOD = {
    "resourceType": RESOURCE_TYPE,
    "patient": {"name": "John Doe", "ageInt": 55, "gender": None},
    "reasonCode": [{"text": "T2DM"}],
    "medicationStatement": [{"medication": "Metformin", "dose": {"value": 500, "unit": "mg"}},
                            {"medication": "Aspirin", "dose": None}],
}


def _broken(mutate):
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    return doc


def test_good_summary_and_empty_lists_are_valid():
    assert schema_errors(GOOD) == []
    assert is_valid(empty_summary())
    assert validate_text(dumps(GOOD)) == []


@pytest.mark.parametrize("rule, mutate", [
    ("1 resourceType exact", lambda d: d.update(resourceType="Patient")),
    ("1 resourceType required", lambda d: d.pop("resourceType")),
    ("2 ageInt integer, not a string", lambda d: d["patient"].update(ageInt="55")),
    ("2 ageInt whole years", lambda d: d["patient"].update(ageInt=55.5)),
    ("2 ageInt not negative", lambda d: d["patient"].update(ageInt=-1)),
    ("2 ageInt key required", lambda d: d["patient"].pop("ageInt")),
    ("3 name string or null", lambda d: d["patient"].update(name=["John", "Doe"])),
    ("4 gender male/female/null", lambda d: d["patient"].update(gender="M")),
    ("5 no symptoms key", lambda d: d.update(symptoms=[{"text": "fever"}])),
    ("5 reason entries are {text}", lambda d: d["reasonCode"].append("fever")),
    ("5 reason text not empty", lambda d: d["reasonCode"].append({"text": ""})),
    ("6 dose split, not a string", lambda d: d["medicationStatement"][0].update(dose="500mg")),
    ("6 dose value is a number", lambda d: d["medicationStatement"][0]["dose"].update(value="500")),
    ("6 unit normalised", lambda d: d["medicationStatement"][0]["dose"].update(unit="milligrams")),
    ("6 unit lower case", lambda d: d["medicationStatement"][0]["dose"].update(unit="MG")),
    ("6 dose key required", lambda d: d["medicationStatement"][1].pop("dose")),
    ("6 no invented medication keys", lambda d: d["medicationStatement"][0].update(route="oral")),
    ("no invented patient keys", lambda d: d["patient"].update(dob="1970-01-01")),
])
def test_schema_rejects_each_broken_rule(rule, mutate):
    assert schema_errors(_broken(mutate)), rule


@pytest.mark.parametrize("text", [
    "Here is the summary: " + json.dumps(GOOD),
    "```json\n" + json.dumps(GOOD) + "\n```",
    json.dumps(GOOD) + "\nLet me know if you need anything else.",
    "",
])
def test_rule_7_the_answer_is_the_json_alone(text):
    assert validate_text(text)


def test_errors_name_the_path():
    errors = schema_errors(_broken(lambda d: d["medicationStatement"][0]["dose"].update(unit="tablets")))
    assert errors and errors[0].startswith("$.medicationStatement[0].dose")


def test_schema_is_draft_2020_12_and_closed_at_every_level():
    assert SCHEMA["additionalProperties"] is False
    assert SCHEMA["properties"]["patient"]["additionalProperties"] is False
    assert SCHEMA["properties"]["reasonCode"]["items"]["additionalProperties"] is False
