"""Grounding: does every value of a summary come from its note? Needs no expected answer.

Every value of schema v1 is either copied from the note (the patient's name, reasons, medication
names, the number of an age or a dose) or taken from a closed vocabulary (gender, unit,
resourceType). So a value can be checked against the note alone:

- free text (patient.name, reasonCode[].text, medicationStatement[].medication) must occur in the
  note starting and ending at word boundaries, after folding both sides the same way: Unicode
  compatibility forms (NFKC, so a full-width letter or a ligature is its plain letter), case
  (casefold) and white space (runs become one space; ends are stripped). Nothing else is folded:
  punctuation, letters and accents stay, so "Ampicillin" for the note's "Amoicillin" is not
  grounded, and "ash" is not grounded by "rash" because 'r' and 'a' are both word characters;
- ageInt and dose.value must be a number the note states, in digits ("55y", "0.5mg") or in
  words ("fifty five year old"); digits glued to a letter on their left ("T2DM", "SpO2") are
  part of a name, not numbers;
- gender and unit must be in the schema's vocabularies.

`note_chunks` and `note_numbers` are also what the `grounded` decoding grammar is built from, so
the check and the constraint agree on what "in the note" means.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

from harness.schema import GENDERS, UNITS

_CHUNK = re.compile(r"\w+|\W+")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
_WORD = re.compile(r"[^\W\d_]+")
_ONES = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                     "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
                                     "sixteen", "seventeen", "eighteen", "nineteen"))}
_TENS = {w: 10 * i for i, w in enumerate(("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy",
                                          "eighty", "ninety")) if w}


@dataclass(frozen=True)
class ValueGrounding:
    """One value of a summary and where it sits in the note (character offsets), if anywhere."""

    path: str  # e.g. "medicationStatement[0].medication"
    value: Any
    grounded: bool
    start: int | None = None
    end: int | None = None
    reason: str = ""  # why it is not grounded

    def to_dict(self) -> dict:
        return asdict(self)


def is_word_char(ch: str) -> bool:
    """Python's `\\w`: the one definition of a word character used for boundaries and chunks."""
    return ch.isalnum() or ch == "_"


def note_chunks(note: str) -> list[str]:
    """The note cut into alternating runs of word and non-word characters; joined, they are the note."""
    return _CHUNK.findall(note)


def fold(text: str) -> tuple[str, list[int]]:
    """`text` folded (NFKC, casefold, white space runs -> one space, ends stripped), with the offset in
    `text` of each folded character, so a match in the folded text maps back to the original."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
                origin.append(i)
            continue
        for f in unicodedata.normalize("NFKC", ch).casefold():
            out.append(" " if f.isspace() else f)
            origin.append(i)
    if out and out[-1] == " ":
        out.pop()
        origin.pop()
    return "".join(out), origin


def find_text(value: str, note: str, _folded: tuple[str, list[int]] | None = None) -> tuple[int, int] | None:
    """(start, end) in `note` of the first occurrence of `value` at word boundaries, folded; else None."""
    needle, _ = fold(value)
    hay, origin = _folded or fold(note)
    if not needle:
        return None
    at = hay.find(needle)
    while at != -1:
        end = at + len(needle)
        left_ok = at == 0 or not (is_word_char(hay[at - 1]) and is_word_char(needle[0]))
        right_ok = end == len(hay) or not (is_word_char(hay[end]) and is_word_char(needle[-1]))
        if left_ok and right_ok:
            return origin[at], origin[end - 1] + 1
        at = hay.find(needle, at + 1)
    return None


@dataclass(frozen=True)
class NumberMention:
    value: float
    start: int
    end: int


def note_numbers(note: str) -> list[NumberMention]:
    """Every number the note states, in digits or in English words (0-999), in order of position."""
    found = [NumberMention(float(m.group()), m.start(), m.end()) for m in _NUMBER.finditer(note)]
    found += _word_numbers(note)
    return sorted(found, key=lambda n: n.start)


def _word_numbers(note: str) -> list[NumberMention]:
    """Runs of number words ('fifty five', 'fifty-five', 'one hundred and two'), read greedily."""
    words = [(m.group().casefold(), m.start(), m.end()) for m in _WORD.finditer(note)]
    out: list[NumberMention] = []
    i = 0
    while i < len(words):
        value, j = _read_number(words, i, note)
        if j == i:
            i += 1
            continue
        out.append(NumberMention(float(value), words[i][1], words[j - 1][2]))
        i = j
    return out


def _adjacent(words, j: int, note: str) -> bool:
    """Word j follows word j-1 with only a space or a hyphen between them."""
    return j < len(words) and note[words[j - 1][2]:words[j][1]] in (" ", "-")


def _read_below_100(words, i: int, note: str) -> tuple[int, int]:
    """(value, next index) of a number below 100 starting at word i; next index == i if none."""
    word = words[i][0] if i < len(words) else ""
    if word in _ONES:
        return _ONES[word], i + 1
    if word in _TENS:
        if _adjacent(words, i + 1, note) and words[i + 1][0] in _ONES and 0 < _ONES[words[i + 1][0]] < 10:
            return _TENS[word] + _ONES[words[i + 1][0]], i + 2
        return _TENS[word], i + 1
    return 0, i


def _read_number(words, i: int, note: str) -> tuple[int, int]:
    value, j = _read_below_100(words, i, note)
    if j > i and 0 < value < 10 and _adjacent(words, j, note) and words[j][0] == "hundred":
        value, j = value * 100, j + 1
        k = j + 1 if _adjacent(words, j, note) and words[j][0] == "and" else j
        if _adjacent(words, k, note):
            rest, after = _read_below_100(words, k, note)
            if after > k:
                value, j = value + rest, after
    return value, j


def _same_number(a: float, b: Any) -> bool:
    return isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) and float(b) == a


def ground_summary(obj: Any, note: str) -> list[ValueGrounding]:
    """Every value of a (possibly malformed) summary, each with whether and where the note grounds it.

    Nulls claim nothing and are skipped; values of the wrong type are ungrounded, with the reason."""
    if not isinstance(obj, dict):
        return []
    folded = fold(note)
    numbers = note_numbers(note)
    out: list[ValueGrounding] = []

    def text(path: str, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            out.append(ValueGrounding(path, value, False, reason="not text"))
            return
        where = find_text(value, note, folded)
        out.append(ValueGrounding(path, value, where is not None, *(where or (None, None)),
                                  reason="" if where else "not in the note"))

    def number(path: str, value: Any) -> None:
        if value is None:
            return
        hit = next((n for n in numbers if _same_number(n.value, value)), None)
        out.append(ValueGrounding(path, value, hit is not None, hit.start if hit else None, hit.end if hit else None,
                                  reason="" if hit else "the note states no such number"))

    def vocabulary(path: str, value: Any, allowed: tuple) -> None:
        if value is None:
            return
        ok = value in allowed
        out.append(ValueGrounding(path, value, ok, reason="" if ok else f"not one of {', '.join(allowed)}"))

    patient = obj.get("patient")
    if isinstance(patient, dict):
        text("patient.name", patient.get("name"))
        number("patient.ageInt", patient.get("ageInt"))
        vocabulary("patient.gender", patient.get("gender"), GENDERS)
    for i, reason in enumerate(obj.get("reasonCode") if isinstance(obj.get("reasonCode"), list) else []):
        if isinstance(reason, dict):
            text(f"reasonCode[{i}].text", reason.get("text"))
    meds = obj.get("medicationStatement") if isinstance(obj.get("medicationStatement"), list) else []
    for i, med in enumerate(meds):
        if not isinstance(med, dict):
            continue
        text(f"medicationStatement[{i}].medication", med.get("medication"))
        dose = med.get("dose")
        if isinstance(dose, dict):
            number(f"medicationStatement[{i}].dose.value", dose.get("value"))
            vocabulary(f"medicationStatement[{i}].dose.unit", dose.get("unit"), UNITS)
    return out


def note_segments(note: str, groundings: list[ValueGrounding]) -> list[dict]:
    """The note cut at the edges of every located value: [{"text", "paths"}], where `paths` names the
    values that sit on that stretch of text (empty between values). Joined, the texts are the note."""
    located = [g for g in groundings if g.start is not None]
    edges = sorted({0, len(note), *(g.start for g in located), *(g.end for g in located)})
    segments = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        paths = [g.path for g in located if g.start <= lo and hi <= g.end]
        segments.append({"text": note[lo:hi], "paths": paths})
    return segments
