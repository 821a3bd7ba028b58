"""A field-path diff between an expected summary and a model's output, for people reading reports."""

from __future__ import annotations

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
