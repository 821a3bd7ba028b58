"""Clinical notes built together with their expected summaries, so every case carries its own truth.

One drawing function, `draw_case`, serves both the dataset generator (a seeded `random.Random`) and
the hypothesis strategies (hypothesis' `draw`), through the small `Chooser` interface. Every choice
is made so that its first option / False is the plainest note, which is where hypothesis shrinks to.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from harness.schema import RESOURCE_TYPE
from scenarios.vocab import Vocabulary

T = TypeVar("T")


class Chooser(Protocol):
    def choice(self, options: Sequence[T]) -> T: ...
    def integer(self, lo: int, hi: int) -> int: ...
    def chance(self, p: float) -> bool: ...
    def sample(self, options: Sequence[T], k: int) -> list[T]: ...


class RandomChooser:
    """Chooser over a seeded random.Random: deterministic for a seed."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def choice(self, options):
        return self.rng.choice(list(options))

    def integer(self, lo, hi):
        return self.rng.randint(lo, hi)

    def chance(self, p):
        return self.rng.random() < p

    def sample(self, options, k):
        return self.rng.sample(list(options), k)


class DrawChooser:
    """Chooser over hypothesis' `draw`, so drawn notes shrink to simple ones."""

    def __init__(self, draw: Callable[[Any], Any]):
        from hypothesis import strategies as st

        self.draw, self.st = draw, st

    def choice(self, options):
        return self.draw(self.st.sampled_from(list(options)))

    def integer(self, lo, hi):
        return self.draw(self.st.integers(lo, hi))

    def chance(self, p):
        return self.draw(self.st.booleans())

    def sample(self, options, k):
        return self.draw(self.st.lists(self.st.sampled_from(list(options)), min_size=k, max_size=k, unique=True))


@dataclass(frozen=True)
class Case:
    """A note, its expected summary, and tags naming what it exercises."""

    id: str
    note: str
    expected: dict
    tags: tuple[str, ...] = field(default=())


# Surface forms of each normalised unit, as clinicians write them.
UNIT_SURFACES = {
    "mg": ("mg", " mg", "MG", " milligrams", "Mg"),
    "mcg": ("mcg", " mcg", " micrograms", "MCG"),
    "g": ("g", " g", " grams", "G"),
    "ml": ("ml", " ml", "mL", " mL", " millilitres"),
    "units": (" units", " units", " Units", "units"),
}
AGE_FORMS = ("{a}y", "{a}yo", "{a} yrs", "({a})", "aged {a}", "{a}-year-old", "age: {a}", "{w} year old")
GENDER_FORMS = {"male": ("male", "M", "man"), "female": ("female", "F", "woman")}
NAME_FORMS = ("Pt {n}", "Patient {n}", "{n}", "Name: {n}.", "{title} {n}")
PREFIXES = ("", "History: ", "Seen today: ", "ED note: ", "GP review: ")
REASON_FORMS = ("presents with {r}", "history of {r}", "reports {r}", "c/o {r}", "complains of {r}",
                "Dx: {r}", "PMH: {r}", "presents {r}")
MED_HEADERS = ("Meds: ", "Rx: ", "Prescribe: ", "Started on ", "Plan: ", "Current meds: ", "Prescribe ")
MED_JOINERS = (", ", " and ", "; ", " + ")
FREQUENCIES = (" daily", " BD", " TDS", " once daily", " nocte", " PRN")
# Numbers that are not ages: the model must never take ageInt from these.
DISTRACTORS = ("BP {x}/{y}", "temp 38.{d}C", "HR {x}", "symptoms for {d} days", "in bed {d}", "room {x}",
               "SpO2 9{d}%", "RR 1{d}", "weight {x}kg", "for {d} weeks")
NO_MEDS = ("No regular medications.", "NKDA, no meds.", "")

_ONES = ("", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
          "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """1..99 in words, as dictation software writes ages ('fifty five')."""
    if n < 10:
        return _ONES[n]
    if n < 20:
        return _TEENS[n - 10]
    return (_TENS[n // 10] + " " + _ONES[n % 10]).strip()


def _dose_text(c: Chooser, value: float, unit: str) -> str:
    number = f"{value:g}"
    return number + c.choice(UNIT_SURFACES[unit])


def _misspell(c: Chooser, word: str) -> str:
    """Drop one interior letter: the summary keeps the name as written."""
    i = c.integer(1, len(word) - 2)
    return word[:i] + word[i + 1:]


def _join(c: Chooser, parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    if c.chance(0.5):
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return c.choice(MED_JOINERS).join(parts)


def _distractor(c: Chooser) -> str:
    return c.choice(DISTRACTORS).format(x=c.integer(60, 180), y=c.integer(50, 110), d=c.integer(2, 9))


def draw_case(c: Chooser, vocab: Vocabulary, case_id: str = "case") -> Case:
    """Draw one note and its expected summary from `vocab`."""
    dictation = c.chance(0.15)
    has_name, has_age, has_gender = not c.chance(0.3), not c.chance(0.45), not c.chance(0.5)
    name = f"{c.choice(vocab.first_names)} {c.choice(vocab.last_names)}" if has_name else None
    age = c.integer(18, 95) if has_age else None
    gender = c.choice(("male", "female")) if has_gender else None
    reasons = c.sample(vocab.conditions, c.integer(1, 3))
    drugs = c.sample(vocab.drugs, c.integer(0, 4))

    intro = ""
    if name is not None:
        title = "Mr" if gender == "male" else "Ms"
        form = c.choice(NAME_FORMS if gender else NAME_FORMS[:-1])
        intro = form.format(n=name, title=title).rstrip(".")
    if age is not None:
        # "(55)" reads as an age only right after a name; spoken ages may come in words.
        forms = [f for f in AGE_FORMS if (dictation or "{w}" not in f) and (intro or "(" not in f)]
        form = c.choice(forms)
        sep = " " if form.startswith("(") else ", "
        intro += (sep if intro else "") + form.format(a=age, w=number_words(age))
    if gender is not None:
        # Dictation software writes words, never the M/F shorthand.
        forms = [g for g in GENDER_FORMS[gender] if not (dictation and len(g) == 1)]
        intro += (", " if intro else "") + c.choice(forms)
    text = c.choice(PREFIXES) + intro

    if len(reasons) == 1 or not c.chance(0.5):
        body = c.choice(REASON_FORMS).format(r=_join(c, list(reasons)))
    else:
        body = ". ".join(c.choice(REASON_FORMS).format(r=r) for r in reasons)
    text = f"{text}, {body}" if intro else body[0].upper() + body[1:]
    if c.chance(0.35):
        text += ", " + _distractor(c)
    text += "."

    meds = []
    med_texts = []
    for drug in drugs:
        written = _misspell(c, drug.name) if c.chance(0.1) else drug.name
        if c.chance(0.2):
            dose = None
            med_texts.append(written)
        else:
            value, unit = c.choice(drug.doses)
            dose = {"value": int(value) if float(value).is_integer() else value, "unit": unit}
            freq = c.choice(FREQUENCIES) if c.chance(0.3) else ""
            med_texts.append(f"{written} {_dose_text(c, value, unit)}{freq}")
        meds.append((written, dose))
    if med_texts:
        text += " " + c.choice(MED_HEADERS) + _join(c, med_texts) + "."
    else:
        text = (text + " " + c.choice(NO_MEDS)).strip()

    if dictation:
        text = dictate(text)
    fold = str.lower if dictation else str
    expected = {
        "resourceType": RESOURCE_TYPE,
        "patient": {"name": fold(name) if name else None, "ageInt": age, "gender": gender},
        "reasonCode": [{"text": fold(r)} for r in reasons],
        "medicationStatement": [{"medication": fold(m), "dose": d} for m, d in meds],
    }
    tags = ["dictation"] * dictation + [
        "no-name" if name is None else "name",
        "no-age" if age is None else "age",
        f"meds-{len(meds)}",
    ]
    return Case(id=case_id, note=text, expected=expected, tags=tuple(tags))


def dictate(text: str) -> str:
    """Speech-to-text style: lower case, sentence punctuation dropped (decimals kept)."""
    out = text.lower()
    for mark in (". ", ", ", ": ", "; "):
        out = out.replace(mark, " ")
    return out.rstrip(".").replace("(", "").replace(")", "")
