"""Scenario data: notes with their expected summaries, hand-written, generated and hypothesis-drawn."""

from scenarios.curated import CURATED, SEED
from scenarios.notes import Case, DrawChooser, RandomChooser, draw_case
from scenarios.records import from_record, read_cases, to_record
from scenarios.splits import SplitSizes, generate_split, generate_splits
from scenarios.vocab import HELD_OUT, TRAIN, Vocabulary

__all__ = ["CURATED", "HELD_OUT", "SEED", "TRAIN", "Case", "DrawChooser", "RandomChooser", "SplitSizes",
           "Vocabulary", "draw_case", "from_record", "generate_split", "generate_splits", "read_cases", "to_record"]
