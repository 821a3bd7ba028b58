"""Invented training concepts: new to the model, never a held-out term, and half of a training note's drugs and
conditions."""

import random

from scenarios.invented import invented_vocabulary, with_invented
from scenarios.notes import RandomChooser
from scenarios.splits import generate_split
from scenarios.vocab import HELD_OUT, TRAIN


def test_invented_words_are_never_words_of_a_held_out_term():
    chooser = RandomChooser(random.Random(0))
    invented = set()
    for _ in range(200):
        invented |= invented_vocabulary(chooser, TRAIN).words()
    # Invented words only; the dosage forms and body parts they are dressed in are ordinary English.
    assert len(invented) > 9_000
    assert not invented & HELD_OUT.words()


def test_half_of_a_training_vocabulary_is_invented_and_fresh_per_draw():
    chooser = RandomChooser(random.Random(1))
    first, second = with_invented(chooser, TRAIN), with_invented(chooser, TRAIN)
    for kind in ("condition", "drug"):
        terms, known = first.terms()[kind], TRAIN.terms()[kind]
        assert terms[:len(known)] == known and len(terms) == 2 * len(known)
        assert not set(terms[len(known):]) & set(second.terms()[kind][len(known):]), kind
    assert all(d.doses for d in first.drugs)
    # People keep the training names (generator version 3).
    assert (first.first_names, first.last_names) == (TRAIN.first_names, TRAIN.last_names)


def test_training_notes_mix_known_and_invented_concepts_and_held_out_splits_do_not():
    known_drugs = {d.name.casefold() for d in TRAIN.drugs}
    meds = [m["medication"] for c in generate_split("train", 200) for m in c.expected["medicationStatement"]]
    invented = [m for m in meds if m.casefold() not in known_drugs]
    # Misspelt and dictated known drugs count as invented here, so a little over half.
    assert 0.4 < len(invented) / len(meds) < 0.7
    assert len(set(invented)) > 0.9 * len(invented)  # each seen about once
    held_out_drugs = {d.name.casefold() for d in HELD_OUT.drugs}
    test_meds = [m["medication"].casefold() for c in generate_split("test", 100)
                 for m in c.expected["medicationStatement"]]
    assert sum(m in held_out_drugs for m in test_meds) > 0.8 * len(test_meds)  # misspelt ones aside
