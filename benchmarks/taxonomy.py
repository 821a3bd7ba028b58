"""Where an adapter's errors come from: a finer taxonomy than the report's, from a recorded run.

Reads a run's summary.json (default: the reference adapter's recorded baseline) and, for one
variant, classifies every wrong value of the held-out test notes (ids `test-*`):

- free text (reasons, medications, names): `copy error` (a near miss of an expected value, letters
  changed: not in the note), `wrong span` (in the note, but not an expected value: too short, too
  long, or a neighbour), `leak` (a reason that is one of the note's medications, or the reverse),
  `missing` (an expected value with nothing close to it), `invented` (not in the note, near nothing);
- gender, by how the note states it (`F`/`M`, a word, a title, a pronoun, or not at all);
- doses: unit wrong (by how the note spells the unit), value wrong, or no dose;
- by position: the first, second, third ... reason or medication of a note;
- by note style: dictated notes against written ones.

    .venv/bin/python benchmarks/taxonomy.py [--summary reports/RUN/summary.json] [--variant tuned:free]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from difflib import SequenceMatcher
from pathlib import Path

from harness.grounding import find_text
from harness.grounding import fold as fold_with_offsets
from harness.scoring import norm_text, parse_output
from harness.settings import REFERENCE_BASELINE

NEAR = 0.75  # SequenceMatcher ratio above which a value counts as a copy of another
GENDER_CUES = (  # first match wins: how a note states the patient's gender
    ("letter F/M", r"\b[FM]\b"),
    ("title", r"\b(Mr|Mrs|Ms|Miss)\b\.?"),
    ("word", r"\b(female|male|woman|man|lady|gentleman|girl|boy)\b"),
    ("pronoun", r"\b(she|he|her|his|him)\b"),
)


def gender_cue(note: str) -> str:
    for name, pattern in GENDER_CUES:
        if re.search(pattern, note, flags=re.IGNORECASE if name != "letter F/M" else 0):
            return name
    return "not stated"


def unit_spelling(note: str, value) -> str:
    """How the note writes the unit after a dose's number: '2G', '500mg', '5 milligrams' -> a class."""
    match = re.search(rf"\b{re.escape(str(value))}\s*([A-Za-z]+)", note) if value is not None else None
    if not match:
        return "not found"
    unit = match.group(1)
    if len(unit) > 3:
        return "a word"
    return "upper case" if unit.isupper() else "lower case"


def fold(text: str) -> str:
    return fold_with_offsets(text)[0]


def similar(a: str, b: str) -> float:
    return SequenceMatcher(None, fold(a), fold(b)).ratio()


def related(a: str, b: str) -> bool:
    """One value is part of the other, or they share most of their letters."""
    return fold(a) in fold(b) or fold(b) in fold(a) or similar(a, b) >= 0.5


def classify_text(got: str, wanted: list[str], note: str, other_list: list[str]) -> str:
    """One produced value that matches no expected one exactly."""
    if any(similar(got, o) >= NEAR for o in other_list):
        return "leak"
    if find_text(got, note) is None:
        return "copy error" if any(similar(got, w) >= NEAR for w in wanted) else "invented"
    return "wrong span" if any(related(got, w) for w in wanted) else "wrong span (elsewhere)"


def text_errors(field: str, want: list[str], got: list[str], note: str, other: list[str], out: dict) -> None:
    remaining = list(got)
    for i, w in enumerate(want):
        match = next((g for g in remaining if norm_text(g) == norm_text(w)), None)
        out["position"][field][i + 1][0] += 1
        if match is not None:
            remaining.remove(match)
            continue
        out["position"][field][i + 1][1] += 1
        if not any(related(g, w) for g in remaining):
            out["kinds"][field]["missing"] += 1
    for g in remaining:
        out["kinds"][field][classify_text(g, want, note, other)] += 1
        if len(out["examples"][field]) < 12:
            out["examples"][field].append(g)


def analyse(scenarios: dict) -> dict:
    out = {"kinds": defaultdict(Counter), "gender": defaultdict(lambda: [0, 0]), "doses": Counter(),
           "units": defaultdict(lambda: [0, 0]), "position": defaultdict(lambda: defaultdict(lambda: [0, 0])),
           "style": defaultdict(lambda: [0, 0, 0.0]), "examples": defaultdict(list), "notes": 0}
    for sid, s in scenarios.items():
        if not sid.startswith("test-"):
            continue
        out["notes"] += 1
        note, expected = s["note"], s["expected"]
        obj, _ = parse_output(s.get("output") or "")
        obj = obj if isinstance(obj, dict) else {}
        style = out["style"]["dictated" if "dictation" in s["tags"] else "written"]
        style[0] += 1
        style[1] += not s["passed"]
        style[2] += s.get("f1") or 0.0
        patient = obj.get("patient") if isinstance(obj.get("patient"), dict) else {}
        cue = out["gender"][gender_cue(note)]
        cue[0] += 1
        cue[1] += patient.get("gender") != expected["patient"]["gender"]
        reasons = [r.get("text") for r in obj.get("reasonCode") or [] if isinstance(r, dict)]
        meds = [m for m in obj.get("medicationStatement") or [] if isinstance(m, dict)]
        want_reasons = [r["text"] for r in expected["reasonCode"]]
        want_meds = [m["medication"] for m in expected["medicationStatement"]]
        text_errors("reasonCode.text", want_reasons, [r for r in reasons if isinstance(r, str)], note,
                    want_meds, out)
        named = [m.get("medication") for m in meds if isinstance(m.get("medication"), str)]
        text_errors("medication", want_meds, named, note, want_reasons, out)
        got_by_name = {norm_text(m.get("medication")): m for m in meds}
        for med in expected["medicationStatement"]:
            got = got_by_name.get(norm_text(med["medication"]))
            if got is None or med["dose"] is None:
                continue
            dose = got.get("dose") if isinstance(got.get("dose"), dict) else None
            spelling = out["units"][unit_spelling(note, med["dose"]["value"])]
            spelling[0] += 1
            if dose is None:
                out["doses"]["no dose"] += 1
            elif norm_text(dose.get("value")) != norm_text(med["dose"]["value"]):
                out["doses"]["value wrong"] += 1
            elif dose.get("unit") != med["dose"]["unit"]:
                out["doses"]["unit wrong"] += 1
                spelling[1] += 1
            else:
                out["doses"]["right"] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", default=str(REFERENCE_BASELINE))
    parser.add_argument("--variant", default="tuned:free")
    args = parser.parse_args()
    summary = json.loads(Path(args.summary).read_text())
    t = analyse(summary["roles"][args.variant]["scenarios"])
    print(f"{args.variant} of {args.summary}: {t['notes']} test notes")
    for field, kinds in t["kinds"].items():
        print(f"\n{field}: wrong or missing values by kind: {dict(kinds.most_common())}")
        print("  by position (wrong or missing / expected): " + ", ".join(
            f"#{p}: {bad}/{n}" for p, (n, bad) in sorted(t["position"][field].items())))
        print(f"  examples: {t['examples'][field]}")
    print("\ngender wrong, by how the note states it: " + ", ".join(
        f"{cue}: {bad}/{n}" for cue, (n, bad) in sorted(t["gender"].items(), key=lambda kv: -kv[1][1])))
    print(f"doses of the medications it named: {dict(t['doses'].most_common())}")
    print("unit wrong, by the note's spelling: " + ", ".join(
        f"{k}: {bad}/{n}" for k, (n, bad) in sorted(t["units"].items())))
    print("by note style (notes, failing, mean F1): " + ", ".join(
        f"{k}: {n}, {bad}, {f1 / n:.3f}" for k, (n, bad, f1) in t["style"].items()))


if __name__ == "__main__":
    main()
