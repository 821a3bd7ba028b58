"""Invented concepts: made-up drugs and conditions, fresh for every training note.

A model that has seen the same 20 drugs 400 times learns to write those 20 names, and on a held-out
note it writes an empty medication list or a remembered name (a quick adapter trained on the fixed
vocabulary wrote `[]` for all 12 held-out notes read). Names it has never seen, and will never see again,
can only be copied from the note: half of every training note's drugs and conditions are invented this
way. No invented word is a word of a held-out term, so the held-out concepts stay out of training.

People's names come from the training list. Generator version 2 invented them too; the same recipe
scored higher on version 3 (field F1 0.811 against 0.775 on 50 test notes), and both wrote a name for
held-out notes that give none about equally often (README, "The reference adapter").
"""

from __future__ import annotations

from dataclasses import replace

from scenarios.notes import Chooser
from scenarios.vocab import HELD_OUT, Drug, Vocabulary

_ONSETS = ("b", "br", "c", "cl", "d", "dr", "f", "fl", "g", "gl", "h", "j", "k", "l", "m", "n", "p", "pl",
           "qu", "r", "s", "sk", "st", "t", "tr", "v", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ia", "ou", "y")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "x", "m", "nd")
# Dosage forms and salts a drug name may carry, none of them a word of a held-out drug.
_DRUG_FORMS = ("{w}", "{w}", "{w}", "{w}", "{w} {v}", "{w} hydrochloride", "{w} sodium", "{w} XL", "{w} cream",
               "{w} nasal spray", "{w} inhaler", "{w} patch", "{w} {v} {u}")
_DOSES = ((0.5, "mg"), (2, "mg"), (5, "mg"), (12.5, "mg"), (25, "mg"), (60, "mg"), (200, "mg"), (750, "mg"),
          (25, "mcg"), (125, "mcg"), (400, "mcg"), (1, "g"), (2, "g"), (5, "ml"), (20, "ml"), (2.5, "ml"),
          (6, "units"), (18, "units"), (100, "units"))
_CONDITION_FORMS = ("{w}", "{w}", "{w}osis", "{w}itis", "{w} syndrome", "{w} disease", "chronic {w}",
                    "{part} {symptom}", "{symptom} in {part}", "{w} {v}")
_PARTS = ("shoulder", "elbow", "jaw", "neck", "heel", "thumb", "calf", "left knee", "right shoulder", "groin")
_SYMPTOMS = ("pain", "swelling", "stiffness", "itching", "cramps", "weakness", "tingling")

# Words no invented word may be: every word of every held-out term (leakage), and a few common ones.
_TAKEN = HELD_OUT.words() | {
    "on", "of", "in", "and", "no", "so", "to", "be", "man", "male", "female", "woman", "mr", "ms", "pt"}


def _word(c: Chooser, lo: int, hi: int) -> str:
    while True:
        syllables = [c.choice(_ONSETS) + c.choice(_VOWELS) + c.choice(_CODAS) for _ in range(c.integer(lo, hi))]
        word = "".join(syllables)
        if len(word) >= 4 and word.casefold() not in _TAKEN:
            return word


def _fill(c: Chooser, form: str, **more: str) -> str:
    w, v, u = _word(c, 2, 3), _word(c, 2, 3), _word(c, 2, 2)
    return form.format(w=w, v=v, u=u, **more)


def invented_drug(c: Chooser) -> Drug:
    name = _fill(c, c.choice(_DRUG_FORMS))
    return Drug(name[0].upper() + name[1:], tuple(c.sample(_DOSES, c.integer(1, 2))))


def invented_condition(c: Chooser) -> str:
    return _fill(c, c.choice(_CONDITION_FORMS), part=c.choice(_PARTS), symptom=c.choice(_SYMPTOMS))


def invented_vocabulary(c: Chooser, like: Vocabulary) -> Vocabulary:
    """As many invented conditions and drugs as `like` has of each (and no names)."""
    return Vocabulary(name="invented", conditions=tuple(invented_condition(c) for _ in like.conditions),
                      drugs=tuple(invented_drug(c) for _ in like.drugs), first_names=(), last_names=())


def with_invented(c: Chooser, vocab: Vocabulary) -> Vocabulary:
    """`vocab` and as many invented drugs and conditions again: about half of a note's are new to the model."""
    new = invented_vocabulary(c, vocab)
    return replace(vocab, conditions=vocab.conditions + new.conditions, drugs=vocab.drugs + new.drugs)
