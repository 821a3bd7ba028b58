"""Hypothesis strategies that build a note and its expected summary together."""

from __future__ import annotations

from hypothesis import strategies as st

from scenarios.notes import Case, DrawChooser, draw_case
from scenarios.vocab import HELD_OUT, Vocabulary


@st.composite
def clinical_cases(draw, vocab: Vocabulary = HELD_OUT) -> Case:
    """A note drawn from `vocab` (held-out concepts by default) with its own truth; shrinks to plain notes."""
    return draw_case(DrawChooser(draw), vocab, case_id="hypothesis")
