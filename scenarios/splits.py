"""The synthetic dataset's splits: train from the training vocabulary and invented concepts, val and
test held out."""

from __future__ import annotations

import random
from dataclasses import dataclass

from scenarios.invented import with_invented
from scenarios.notes import Case, RandomChooser, draw_case
from scenarios.vocab import HELD_OUT, TRAIN, Vocabulary

SPLIT_VOCAB: dict[str, Vocabulary] = {"train": TRAIN, "val": HELD_OUT, "test": HELD_OUT}
# Raised whenever a seed's splits change (val and test are as in 1 throughout). 2: half of the training
# concepts invented, names too; 3: half of the drugs and conditions, names from the training list.
GENERATOR_VERSION = 3


@dataclass(frozen=True)
class SplitSizes:
    """Defaults of the original study: 450 train + 50 validation, plus a test split for evaluation."""

    train: int = 450
    val: int = 50
    test: int = 100

    def __post_init__(self):
        for name in SPLIT_VOCAB:
            if getattr(self, name) < 0:
                raise ValueError(f"split size {name} must be >= 0, got {getattr(self, name)}")


def generate_split(split: str, n: int, seed: int = 0) -> list[Case]:
    """`n` cases of `split`, deterministic for (split, seed) and independent of the other splits' sizes."""
    if split not in SPLIT_VOCAB:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_VOCAB)}")
    chooser = RandomChooser(random.Random(f"sunrise-{seed}-{split}"))
    vocab = SPLIT_VOCAB[split]
    if split == "train":  # terms seen once can only be copied, not remembered (scenarios/invented.py)
        return [draw_case(chooser, with_invented(chooser, vocab), f"{split}-{i:03d}") for i in range(n)]
    return [draw_case(chooser, vocab, f"{split}-{i:03d}") for i in range(n)]


def generate_splits(sizes: SplitSizes = SplitSizes(), seed: int = 0) -> dict[str, list[Case]]:
    return {split: generate_split(split, getattr(sizes, split), seed) for split in SPLIT_VOCAB}
