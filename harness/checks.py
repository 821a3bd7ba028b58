"""The per-scenario checks, each a named rule over one scored output.

A check returns None when it does not apply to the scenario (no dose to split, say), otherwise a
Verdict. The suite turns each check into its own selectable test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.schema import RESOURCE_TYPE
from harness.scoring import CaseScore


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


def _schema_valid(s: CaseScore) -> Verdict:
    return Verdict(s.schema_valid, "; ".join(s.schema_errors[:3]))


def _resource_type(s: CaseScore) -> Verdict:
    return Verdict(s.resource_type_ok, f"resourceType is not exactly {RESOURCE_TYPE!r}")


def _no_invented_keys(s: CaseScore) -> Verdict:
    return Verdict(s.lenient_json and not s.invented_keys,
                   "invented keys: " + ", ".join(s.invented_keys[:8]) if s.invented_keys else "no JSON object")


def _age(s: CaseScore) -> Verdict:
    want = "null (the note states no age)" if s.age_expected is None else str(s.age_expected)
    return Verdict(s.age_ok, f"ageInt should be {want}, got {s.age_predicted!r}")


def _dose_split(s: CaseScore) -> Verdict | None:
    if not s.doses_total:
        return None
    return Verdict(s.dose_split_ok, f"{s.doses_total - s.doses_ok} of {s.doses_total} doses not split into the "
                                    "right value and unit")


def _one_entry_per_medication(s: CaseScore) -> Verdict:
    got = "no medicationStatement list" if s.med_count_predicted is None else f"{s.med_count_predicted} entries"
    return Verdict(s.med_count_ok, f"{s.med_count_expected} medications in the note, {got} in the answer")


def _grounded(s: CaseScore) -> Verdict | None:
    if s.ungrounded is None:
        return None
    if not s.lenient_json:
        return Verdict(False, "no JSON object")
    return Verdict(not s.ungrounded, "not in the note: " + "; ".join(s.ungrounded[:5]))


def _no_chatter(s: CaseScore) -> Verdict:
    if s.strict_json:
        return Verdict(True)
    return Verdict(False, "JSON wrapped in prose or fences" if s.chatty else "no JSON in the output")


CHECKS: dict[str, Callable[[CaseScore], Verdict | None]] = {
    "schema_valid": _schema_valid,
    "resource_type": _resource_type,
    "no_invented_keys": _no_invented_keys,
    "age": _age,
    "dose_split": _dose_split,
    "one_entry_per_medication": _one_entry_per_medication,
    "no_chatter": _no_chatter,
    "grounded": _grounded,
}


def run_checks(score: CaseScore) -> dict[str, Verdict]:
    """Every applicable check's verdict for one output."""
    return {name: v for name, check in CHECKS.items() if (v := check(score)) is not None}


def describe_output(text: str, note: str) -> dict:
    """What can be said of an output with no expected summary (the manual testing page): the schema,
    the rules, and where in the note each value sits (or that it does not)."""
    from harness.grounding import ground_summary, note_segments
    from harness.schema import schema_errors
    from harness.scoring import invented_keys, parse_output

    obj, strict = parse_output(text)
    if not isinstance(obj, dict):
        return {"json": None, "strict_json": False, "schema_valid": False, "errors": ["no JSON object in the output"],
                "checks": [], "grounded": False, "grounding": [], "note_segments": note_segments(note, [])}
    errors = schema_errors(obj)
    grounding = ground_summary(obj, note)
    ungrounded = [g for g in grounding if not g.grounded]
    patient = obj.get("patient") if isinstance(obj.get("patient"), dict) else {}
    meds = [m for m in obj.get("medicationStatement") or [] if isinstance(m, dict)] \
        if isinstance(obj.get("medicationStatement"), list) else []
    age = patient.get("ageInt", "(missing)")
    doses = [m.get("dose") for m in meds]
    split = all(d is None or (isinstance(d, dict) and set(d) == {"value", "unit"}) for d in doses)
    checks = [
        {"rule": "JSON alone, no chatter", "ok": strict, "detail": "" if strict else "text around the JSON"},
        {"rule": "resourceType", "ok": obj.get("resourceType") == RESOURCE_TYPE,
         "detail": str(obj.get("resourceType"))},
        {"rule": "every value is in the note", "ok": not ungrounded,
         "detail": "; ".join(f"{g.path} = {g.value!r} ({g.reason})" for g in ungrounded)},
        {"rule": "age", "ok": age is None or isinstance(age, int),
         "detail": "null (no age stated)" if age is None else f"{age}"},
        {"rule": "doses split into value + unit", "ok": split,
         "detail": f"{sum(isinstance(d, dict) for d in doses)} with dose, {sum(d is None for d in doses)} without"},
        {"rule": "medication entries", "ok": isinstance(obj.get("medicationStatement"), list),
         "detail": f"{len(meds)} entries"},
        {"rule": "no invented keys", "ok": not invented_keys(obj), "detail": ", ".join(invented_keys(obj))},
    ]
    return {"json": obj, "strict_json": strict, "schema_valid": not errors, "errors": errors, "checks": checks,
            "grounded": not ungrounded, "grounding": [g.to_dict() for g in grounding],
            "note_segments": note_segments(note, grounding)}
