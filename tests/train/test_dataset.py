"""The synthetic dataset: deterministic, the right sizes, valid answers and no leakage."""

import json
import re

import pytest

from harness.cli import main
from harness.schema import validate_text
from scenarios.records import read_cases
from scenarios.splits import GENERATOR_VERSION, SplitSizes, generate_split, generate_splits
from scenarios.vocab import HELD_OUT, TRAIN
from train.dataset import dataset_hash, dataset_provenance, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    write_dataset(out)
    return out


def test_default_sizes_and_chat_record_shape(dataset):
    lines = {s: (dataset / f"{s}.jsonl").read_text().splitlines() for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in lines.items()} == {"train": 450, "val": 50, "test": 100}
    record = json.loads(lines["train"][0])
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
    for split in lines.values():
        for line in split:
            assert validate_text(json.loads(line)["messages"][1]["content"]) == []


def test_provenance_names_the_generator_seed_and_sizes(dataset, tmp_path):
    assert dataset_provenance(dataset) == {"generator_version": GENERATOR_VERSION, "seed": 0,
                                           "sizes": {"train": 450, "val": 50, "test": 100}}
    assert dataset_provenance(tmp_path) is None  # data from elsewhere


def test_deterministic_for_a_seed(tmp_path, dataset):
    write_dataset(tmp_path)
    assert dataset_hash(tmp_path) == dataset_hash(dataset)
    write_dataset(tmp_path / "other", seed=1)
    assert dataset_hash(tmp_path / "other") != dataset_hash(dataset)


def test_split_does_not_depend_on_other_split_sizes():
    assert generate_splits(SplitSizes(10, 5, 3))["test"] == generate_splits(SplitSizes(450, 50, 3))["test"]


def test_no_held_out_concept_or_name_occurs_in_training_notes(dataset):
    """Leakage guard: no condition, drug or name of val/test appears anywhere in the training split."""
    train_text = (dataset / "train.jsonl").read_text()
    for kind, terms in HELD_OUT.terms().items():
        for term in terms:
            pattern = re.compile(r"\b" + re.escape(term) + r"\b", re.IGNORECASE)
            assert not pattern.search(train_text), f"held-out {kind} {term!r} leaks into train.jsonl"


def test_held_out_splits_use_only_held_out_concepts(dataset):
    train_terms = {t.casefold() for terms in TRAIN.terms().values() for t in terms}
    for split in ("val", "test"):
        for case in read_cases(dataset / f"{split}.jsonl"):
            for reason in case.expected["reasonCode"]:
                assert reason["text"].casefold() not in train_terms


def test_variety_the_model_must_learn():
    cases = generate_split("train", 450)
    tags = [t for c in cases for t in c.tags]
    for tag in ("no-age", "no-name", "dictation", "meds-0", "meds-4"):
        assert tags.count(tag) >= 20, tag
    assert any(m["dose"] is None for c in cases for m in c.expected["medicationStatement"])
    units = {m["dose"]["unit"] for c in cases for m in c.expected["medicationStatement"] if m["dose"]}
    assert units == {"mg", "mcg", "g", "ml", "units"}


def test_dataset_command_writes_three_files(tmp_path, capsys):
    assert main(["dataset", "--out", str(tmp_path), "--train", "12", "--val", "3", "--test", "4", "--seed", "7"]) == 0
    assert [len((tmp_path / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "val", "test")] == [12, 3, 4]
    assert "train.jsonl" in capsys.readouterr().out


def test_malformed_record_gets_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(ValueError, match="bad-001: not a chat record"):
        read_cases(bad)
