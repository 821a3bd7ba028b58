"""Schema v1 of SunriseEMRClinicalSummary: the one place the output contract is written down."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

RESOURCE_TYPE = "SunriseEMRClinicalSummary"
UNITS = ("mg", "mcg", "g", "ml", "units")
GENDERS = ("male", "female")

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://sunrise.example/schemas/clinical-summary/v1",
    "title": RESOURCE_TYPE,
    "type": "object",
    "additionalProperties": False,
    "required": ["resourceType", "patient", "reasonCode", "medicationStatement"],
    "properties": {
        "resourceType": {"const": RESOURCE_TYPE},
        "patient": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "ageInt", "gender"],
            "properties": {
                "name": {"type": ["string", "null"], "minLength": 1},
                "ageInt": {"type": ["integer", "null"], "minimum": 0, "maximum": 130},
                "gender": {"enum": [*GENDERS, None]},
            },
        },
        "reasonCode": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["text"],
                "properties": {"text": {"type": "string", "minLength": 1}},
            },
        },
        "medicationStatement": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["medication", "dose"],
                "properties": {
                    "medication": {"type": "string", "minLength": 1},
                    "dose": {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["value", "unit"],
                                "properties": {
                                    "value": {"type": "number", "exclusiveMinimum": 0},
                                    "unit": {"enum": list(UNITS)},
                                },
                            },
                        ]
                    },
                },
            },
        },
    },
}

_VALIDATOR = Draft202012Validator(SCHEMA)
Draft202012Validator.check_schema(SCHEMA)


def schema_errors(obj: Any) -> list[str]:
    """Every way `obj` breaks schema v1, as 'path: message' lines (empty when valid)."""
    errors = sorted(_VALIDATOR.iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


def is_valid(obj: Any) -> bool:
    return _VALIDATOR.is_valid(obj)


def validate_text(text: str) -> list[str]:
    """Rule 7 on top of the schema: the answer must be the JSON object alone."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return [f"$: not a JSON document on its own ({exc.__class__.__name__})"]
    return schema_errors(obj)


def _path(parts) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def allowed_keys() -> dict[str, frozenset[str]]:
    """Allowed keys per object kind, read off SCHEMA so the scorer never keeps its own copy."""
    props = SCHEMA["properties"]
    med_item = props["medicationStatement"]["items"]
    return {
        "root": frozenset(props),
        "patient": frozenset(props["patient"]["properties"]),
        "reason": frozenset(props["reasonCode"]["items"]["properties"]),
        "medication": frozenset(med_item["properties"]),
        "dose": frozenset(med_item["properties"]["dose"]["oneOf"][1]["properties"]),
    }


def dumps(summary: dict) -> str:
    """The canonical answer text: compact JSON, the form models are trained to write."""
    return json.dumps(summary, ensure_ascii=False, separators=(",", ":"))


def empty_summary() -> dict:
    return {
        "resourceType": RESOURCE_TYPE,
        "patient": {"name": None, "ageInt": None, "gender": None},
        "reasonCode": [],
        "medicationStatement": [],
    }
