"""A field-path diff between an expected summary and a model's output, for people reading reports."""

from __future__ import annotations

import json
import re
from typing import Any

from harness.grounding import ground_summary
from harness.scoring import invented_keys, norm_text, parse_output


def _entry(path: str, kind: str, expected: Any = None, got: Any = None) -> dict:
    return {"path": path, "kind": kind, "expected": expected, "got": got}


def diff_output(output: str | None, expected: dict, note: str | None = None) -> list[dict]:
    """What was wrong, path by path: 'wrong value', 'missing', 'unexpected entry', 'invented key', and
    (given the note) 'ungrounded' for each value the note does not contain."""
    obj, _ = parse_output(output or "")
    if not isinstance(obj, dict):
        return [_entry("$", "no JSON object", "a SunriseEMRClinicalSummary object", (output or "")[:120])]
    out = []
    if obj.get("resourceType") != expected["resourceType"]:
        kind = "missing" if "resourceType" not in obj else "wrong value"
        out.append(_entry("resourceType", kind, expected["resourceType"], obj.get("resourceType")))
    patient = obj.get("patient") if isinstance(obj.get("patient"), dict) else {}
    for key, want in expected["patient"].items():
        if key not in patient:
            out.append(_entry(f"patient.{key}", "missing", want))
        elif norm_text(patient[key]) != norm_text(want) or type(patient[key]) is bool:
            out.append(_entry(f"patient.{key}", "wrong value", want, patient[key]))
    out += _list_diff("reasonCode", [r["text"] for r in expected["reasonCode"]],
                      [r.get("text") for r in _dicts(obj.get("reasonCode"))])
    want_meds = {norm_text(m["medication"]): m for m in expected["medicationStatement"]}
    got_meds = {norm_text(m.get("medication")): m for m in _dicts(obj.get("medicationStatement"))}
    for name, med in want_meds.items():
        if name not in got_meds:
            out.append(_entry("medicationStatement", "missing", med["medication"]))
        elif _dose(got_meds[name].get("dose")) != _dose(med["dose"]):
            out.append(_entry(f"medicationStatement[{med['medication']}].dose", "wrong value", med["dose"],
                              got_meds[name].get("dose")))
    for name, med in got_meds.items():
        if name not in want_meds:
            out.append(_entry("medicationStatement", "unexpected entry", None, med.get("medication")))
    out += [_entry(path, "invented key") for path in invented_keys(obj)]
    if note is not None:
        out += [_entry(g.path, "ungrounded", None, g.value) for g in ground_summary(obj, note) if not g.grounded]
    return out


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dose(dose: Any) -> Any:
    if isinstance(dose, dict):
        return norm_text(dose.get("value")), norm_text(dose.get("unit"))
    return norm_text(dose)


def _list_diff(path: str, want: list, got: list) -> list[dict]:
    remaining = [norm_text(g) for g in got]
    out = []
    for w in want:
        if norm_text(w) in remaining:
            remaining.remove(norm_text(w))
        else:
            out.append(_entry(path, "missing", w))
    originals = {norm_text(g): g for g in got}
    out += [_entry(path, "unexpected entry", None, originals[r]) for r in remaining]
    return out


def field_of(path: str) -> str:
    """The field a diff path belongs to, for counting errors by field:
    'medicationStatement[Metformin].dose' and 'medicationStatement[0].dose.unit' are both
    'medicationStatement.dose'; 'reasonCode[1].text' is 'reasonCode'."""
    if path == "$":
        return "(whole output)"
    field = re.sub(r"\[[^\]]*\]", "", path)
    for long, short in ((".dose.value", ".dose"), (".dose.unit", ".dose"), ("medicationStatement.medication",
                        "medicationStatement"), ("reasonCode.text", "reasonCode")):
        field = field.replace(long, short)
    return field


_ABSENT = object()


def field_rows(output: str | None, expected: dict, note: str | None = None) -> list[dict]:
    """Expected and output side by side, one row per field (reasons and medications paired by their
    text): [{"path", "expected", "got", "status", "ungrounded"}], values as display strings ('—' when
    absent); status is ok, wrong value, missing or extra; `ungrounded` lists the row's output values
    that the note does not contain."""
    obj, _ = parse_output(output or "")
    obj = obj if isinstance(obj, dict) else {}
    patient = obj.get("patient") if isinstance(obj.get("patient"), dict) else {}
    bad = {g.path: g.value for g in ground_summary(obj, note) if not g.grounded} if note is not None else {}
    rows: list[dict] = []

    def add(path: str, want: Any, got: Any, item: str | None = None) -> None:
        """`item`: the output entry the row shows (e.g. 'medicationStatement[2].'): its values' grounding."""
        if got is _ABSENT:
            status = "missing"
        elif want is _ABSENT:
            status = "extra"
        else:
            status = "ok" if _display(want).casefold().split() == _display(got).casefold().split() else "wrong value"
        ungrounded = [v for p, v in bad.items() if p == path or (item and p.startswith(item))]
        rows.append({"path": path, "expected": _display(want), "got": _display(got), "status": status,
                     "ungrounded": [_display(v) for v in ungrounded]})

    add("resourceType", expected["resourceType"], obj.get("resourceType", _ABSENT))
    for key, want in expected["patient"].items():
        add(f"patient.{key}", want, patient.get(key, _ABSENT))
    got_reasons = list(enumerate(r.get("text") for r in _list_items(obj.get("reasonCode"))))
    for want in [r["text"] for r in expected["reasonCode"]]:
        i, got = _take(got_reasons, want)
        add("reasonCode", want, got, f"reasonCode[{i}]." if i is not None else None)
    for i, got in got_reasons:
        add("reasonCode", _ABSENT, got, f"reasonCode[{i}].")
    got_meds = list(enumerate(_list_items(obj.get("medicationStatement"))))
    for want in expected["medicationStatement"]:
        match = next(((i, m) for i, m in got_meds if norm_text(m.get("medication")) == norm_text(want["medication"])),
                     None)
        if match:
            got_meds.remove(match)
        add(f"medicationStatement[{want['medication']}]", _med(want), _med(match[1]) if match else _ABSENT,
            f"medicationStatement[{match[0]}]." if match else None)
    for i, m in got_meds:
        add(f"medicationStatement[{m.get('medication')}]", _ABSENT, _med(m), f"medicationStatement[{i}].")
    return rows


def _list_items(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _take(items: list[tuple[int, Any]], want: str) -> tuple[int | None, Any]:
    for item in items:
        if norm_text(item[1]) == norm_text(want):
            items.remove(item)
            return item
    return None, _ABSENT


def _med(med: dict) -> Any:
    dose = med.get("dose")
    if isinstance(dose, dict) and set(dose) <= {"value", "unit"}:
        return f"{med.get('medication')} · {dose.get('value')} {dose.get('unit')}"
    return f"{med.get('medication')} · {json.dumps(dose, ensure_ascii=False)}"


def _display(value: Any) -> str:
    if value is _ABSENT:
        return "—"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
