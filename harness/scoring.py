"""Scoring one model output against its expected summary, and aggregating many.

Field-level scores treat each field path as a multiset of facts: scalar fields contribute one fact
(null included, so a correct null counts), lists contribute one fact per entry. Medications are
matched on their normalised name, so the order of entries never changes a score.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.grounding import ground_summary
from harness.schema import RESOURCE_TYPE, allowed_keys, schema_errors

FIELDS = (
    "resourceType",
    "patient.name",
    "patient.ageInt",
    "patient.gender",
    "reasonCode.text",
    "medicationStatement.medication",
    "medicationStatement.dose",
)
# Bounds that keep the scorer linear on hostile input (huge strings with many braces).
_MAX_DECODE_ATTEMPTS = 64
_ALLOWED = allowed_keys()
MISSING = "(missing)"  # shown where a key the schema requires is absent


@dataclass(frozen=True)
class FieldCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: FieldCounts) -> FieldCounts:
        return FieldCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """No predictions: perfect only if nothing was expected either."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float(self.fn == 0)

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float(self.fp == 0)

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0


@dataclass(frozen=True)
class CaseScore:
    """Everything the checks need to know about one output."""

    strict_json: bool  # the whole output (white space aside) is one JSON document
    lenient_json: bool  # a JSON object could be dug out of the output
    schema_valid: bool
    schema_errors: tuple[str, ...]
    resource_type_ok: bool
    invented_keys: tuple[str, ...]  # paths of keys schema v1 does not allow
    age_expected: int | None
    age_predicted: Any
    age_ok: bool
    doses_total: int  # expected medications that carry a dose
    doses_ok: int  # ... whose predicted dose has the right value and unit
    med_count_expected: int
    med_count_predicted: int | None
    fields: dict[str, FieldCounts] = field(default_factory=dict)
    # Values not found in the note, as 'path: value' (None: scored without the note, not judged).
    ungrounded: tuple[str, ...] | None = None

    @property
    def grounded(self) -> bool:
        """A JSON object came out and every value in it comes from the note."""
        return self.lenient_json and not self.ungrounded

    @property
    def chatty(self) -> bool:
        """JSON was there, but wrapped in something else (prose, fences)."""
        return self.lenient_json and not self.strict_json

    @property
    def null_age_case(self) -> bool:
        return self.age_expected is None

    @property
    def dose_split_ok(self) -> bool:
        return self.doses_ok == self.doses_total

    @property
    def med_count_ok(self) -> bool:
        return self.med_count_predicted == self.med_count_expected

    @property
    def totals(self) -> FieldCounts:
        return sum(self.fields.values(), FieldCounts())

    @property
    def f1(self) -> float:
        return self.totals.f1

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fields"] = {k: asdict(v) for k, v in self.fields.items()}
        out.update(chatty=self.chatty, dose_split_ok=self.dose_split_ok, med_count_ok=self.med_count_ok,
                   f1=self.f1, grounded=self.grounded)
        return out


def parse_output(text: str) -> tuple[Any, bool]:
    """Return (object, strict): the JSON in a model's output and whether it stood alone.

    Strict means the whole output is one JSON document. Otherwise the first JSON object that can be
    decoded from a '{' in the text is taken (chatter, markdown fences). (None, False) when none.
    """
    if not isinstance(text, str):
        return None, False
    try:
        return json.loads(text), True
    except (ValueError, RecursionError):
        pass
    decoder = json.JSONDecoder()
    start = text.find("{")
    attempts = 0
    while start != -1 and attempts < _MAX_DECODE_ATTEMPTS:
        attempts += 1
        try:
            obj, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            return obj, False
        start = text.find("{", start + 1)
    return None, False


def score_case(output: str, expected: dict, note: str | None = None) -> CaseScore:
    """Score one raw model output against the expected summary (and, given the note it came from,
    whether every value is grounded in it). Never raises on any string."""
    obj, strict = parse_output(output)
    lenient = isinstance(obj, dict)
    pred = obj if lenient else {}
    errors = tuple(schema_errors(obj)) if lenient else ("$: no JSON object found",)
    patient = pred.get("patient") if isinstance(pred.get("patient"), dict) else {}
    age_pred = patient.get("ageInt", MISSING)
    exp_age = expected["patient"]["ageInt"]
    pred_meds = _list_of_dicts(pred.get("medicationStatement"))
    doses_total, doses_ok = _dose_matches(expected["medicationStatement"], pred_meds)
    return CaseScore(
        strict_json=strict,
        lenient_json=lenient,
        schema_valid=not errors,
        schema_errors=errors,
        resource_type_ok=pred.get("resourceType") == RESOURCE_TYPE,
        invented_keys=tuple(invented_keys(obj)) if lenient else (),
        age_expected=exp_age,
        age_predicted=age_pred,
        age_ok=lenient and "ageInt" in patient and _same_age(age_pred, exp_age),
        doses_total=doses_total,
        doses_ok=doses_ok,
        med_count_expected=len(expected["medicationStatement"]),
        med_count_predicted=len(pred_meds) if isinstance(pred.get("medicationStatement"), list) else None,
        fields=field_counts(expected, pred),
        ungrounded=None if note is None else tuple(f"{g.path}: {json.dumps(g.value, ensure_ascii=False)}"
                                                   for g in ground_summary(obj, note) if not g.grounded),
    )


def _same_age(pred: Any, expected: int | None) -> bool:
    if expected is None:
        return pred is None
    return isinstance(pred, int) and not isinstance(pred, bool) and pred == expected


def invented_keys(obj: Any) -> list[str]:
    """Paths of keys outside schema v1, e.g. ['symptoms', 'patient.dob', 'medicationStatement[1].route']."""
    if not isinstance(obj, dict):
        return []
    found = [k for k in obj if k not in _ALLOWED["root"]]
    if isinstance(obj.get("patient"), dict):
        found += [f"patient.{k}" for k in obj["patient"] if k not in _ALLOWED["patient"]]
    for i, item in enumerate(_list_or_empty(obj.get("reasonCode"))):
        if isinstance(item, dict):
            found += [f"reasonCode[{i}].{k}" for k in item if k not in _ALLOWED["reason"]]
    for i, item in enumerate(_list_or_empty(obj.get("medicationStatement"))):
        if not isinstance(item, dict):
            continue
        found += [f"medicationStatement[{i}].{k}" for k in item if k not in _ALLOWED["medication"]]
        if isinstance(item.get("dose"), dict):
            found += [f"medicationStatement[{i}].dose.{k}" for k in item["dose"] if k not in _ALLOWED["dose"]]
    return found


def norm_text(value: Any) -> Any:
    """Fold case and white space of strings; numbers compare as floats; everything else as JSON."""
    if isinstance(value, str):
        return re.sub(r"\s+", " ", value).strip().casefold()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else repr(value)
    return json.dumps(value, sort_keys=True, default=str)


def _list_or_empty(value: Any) -> list:
    return value if isinstance(value, list) else []


def _list_of_dicts(value: Any) -> list[dict]:
    return [v for v in _list_or_empty(value) if isinstance(v, dict)]


def _dose_fact(med: dict) -> Any:
    dose = med.get("dose")
    if isinstance(dose, dict):
        return (norm_text(dose.get("value")), norm_text(dose.get("unit")))
    return norm_text(dose)


def _facts(summary: dict) -> dict[str, Counter]:
    patient = summary.get("patient") if isinstance(summary.get("patient"), dict) else {}
    facts: dict[str, Counter] = {name: Counter() for name in FIELDS}
    if "resourceType" in summary:
        facts["resourceType"][norm_text(summary["resourceType"])] += 1
    for key in ("name", "ageInt", "gender"):
        if key in patient:
            facts[f"patient.{key}"][norm_text(patient[key])] += 1
    for item in _list_of_dicts(summary.get("reasonCode")):
        if "text" in item:
            facts["reasonCode.text"][norm_text(item["text"])] += 1
    for med in _list_of_dicts(summary.get("medicationStatement")):
        name = norm_text(med.get("medication"))
        facts["medicationStatement.medication"][name] += 1
        if "dose" in med:
            facts["medicationStatement.dose"][(name, _dose_fact(med))] += 1
    return facts


def field_counts(expected: dict, predicted: dict) -> dict[str, FieldCounts]:
    exp, pred = _facts(expected), _facts(predicted)
    out = {}
    for name in FIELDS:
        tp = sum((exp[name] & pred[name]).values())
        out[name] = FieldCounts(tp=tp, fp=sum(pred[name].values()) - tp, fn=sum(exp[name].values()) - tp)
    return out


def _dose_matches(expected_meds: list[dict], predicted_meds: list[dict]) -> tuple[int, int]:
    by_name: dict[Any, list[dict]] = {}
    for med in predicted_meds:
        by_name.setdefault(norm_text(med.get("medication")), []).append(med)
    total = ok = 0
    for med in expected_meds:
        if med["dose"] is None:
            continue
        total += 1
        candidates = by_name.get(norm_text(med["medication"])) or []
        if candidates and _dose_fact(candidates.pop(0)) == _dose_fact(med):
            ok += 1
    return total, ok


@dataclass(frozen=True)
class Aggregate:
    """Rates over a set of cases; each rate's denominator is the cases the rule applies to."""

    cases: int
    rates: dict[str, float]
    fields: dict[str, FieldCounts]

    @property
    def micro(self) -> FieldCounts:
        return sum(self.fields.values(), FieldCounts())

    def metrics(self) -> dict[str, float]:
        """The headline numbers, flat, as the gate and the report use them."""
        return {**self.rates, "field_f1": self.micro.f1, "field_precision": self.micro.precision,
                "field_recall": self.micro.recall}

    def to_dict(self) -> dict:
        return {
            "cases": self.cases,
            "metrics": self.metrics(),
            "fields": {k: {**asdict(v), "precision": v.precision, "recall": v.recall, "f1": v.f1}
                       for k, v in self.fields.items()},
        }


def _rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 1.0


def aggregate(scores: list[CaseScore]) -> Aggregate:
    null_age = [s.age_ok for s in scores if s.null_age_case]
    judged = [s for s in scores if s.ungrounded is not None]
    stated_age = [s.age_ok for s in scores if not s.null_age_case]
    doses_total = sum(s.doses_total for s in scores)
    rates = {
        "json_valid": _rate([s.strict_json for s in scores]),
        "json_lenient": _rate([s.lenient_json for s in scores]),
        "chatty": sum(s.chatty for s in scores) / len(scores) if scores else 0.0,
        "schema_valid": _rate([s.schema_valid for s in scores]),
        "resource_type": _rate([s.resource_type_ok for s in scores]),
        "no_invented_keys": _rate([s.lenient_json and not s.invented_keys for s in scores]),
        "null_age": _rate(null_age),
        "stated_age": _rate(stated_age),
        "dose_split": sum(s.doses_ok for s in scores) / doses_total if doses_total else 1.0,
        "med_count": _rate([s.med_count_ok for s in scores]),
        "grounded": _rate([s.grounded for s in judged]),
        "ungrounded_values": float(sum(len(s.ungrounded) for s in judged)),  # a count: lower is better
    }
    fields = {name: sum((s.fields[name] for s in scores), FieldCounts()) for name in FIELDS}
    return Aggregate(cases=len(scores), rates=rates, fields=fields)
