"""The decoding grammars with the real tokenizer: they never forbid the truth, and under `grounded`
even a random model can only write schema-valid JSON whose every value is in its note."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.constraint import BatchConstraint, ConstraintTokenizer
from harness.grammar import grounded_grammar, schema_grammar
from harness.grounding import ground_summary
from harness.models import GenerationSettings, HFBackend
from harness.schema import dumps, is_valid
from scenarios import CURATED, SEED, profiles
from scenarios.splits import SplitSizes, generate_split, generate_splits
from train.trainer import encode_example


@pytest.fixture(scope="module")
def constraint_tokenizer(tokenizer):
    stops = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    return ConstraintTokenizer(tokenizer, stops)


def _answer_ids(tokenizer, case, split_quotes: str) -> list[int]:
    """The answer's tokens exactly as training feeds them (with the closing <|im_end|>)."""
    example = encode_example(tokenizer, case.note, dumps(case.expected), split_quotes)
    return [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]


def _refused_at(tokens, decoding: str, case, ids: list[int]) -> int | None:
    """Step the production mask along `ids`; the index of the first token it forbids, or None."""
    import torch

    constraint = BatchConstraint.build(tokens, decoding, [case.note], [10_000])
    for i, token in enumerate(ids):
        logits = torch.zeros(1, tokens.size)
        constraint.mask_([0], logits, [i])
        if logits[0, token] == float("-inf"):
            return i
        if token not in tokens.stop_ids:
            assert constraint.advance(0, token)
    return None


def _dataset_cases():
    return [case for split in generate_splits(SplitSizes(), seed=0).values() for case in split]


@pytest.mark.parametrize("cases", [
    pytest.param(lambda: [*SEED, *CURATED, *generate_split("test", 100)], id="scenarios"),
    pytest.param(_dataset_cases, id="dataset-splits", marks=pytest.mark.slow),  # 600 answers
])
@pytest.mark.parametrize("decoding", ["schema", "grounded"])
@pytest.mark.parametrize("split_quotes", ["none", "closers", "all", "nullable"])
def test_the_constraint_never_forbids_the_truth(tokenizer, constraint_tokenizer, decoding, cases, split_quotes):
    """Every expected summary of the seed, curated and test scenarios and of the dataset's train, val
    and test splits passes the mask token by token, as training tokenises it (each way), through
    <|im_end|>."""
    cases = cases()
    refused = {}
    for case in cases:
        ids = _answer_ids(tokenizer, case, split_quotes)
        at = _refused_at(constraint_tokenizer, decoding, case, ids)
        if at is not None:
            refused[case.id] = (case.note, tokenizer.decode(ids[:at]), tokenizer.decode(ids[at:at + 1]))
    assert not refused, f"{len(refused)} expected answers refused, e.g. {next(iter(refused.items()))}"


def test_grounded_refuses_what_the_note_does_not_say(tokenizer, constraint_tokenizer):
    case = SEED[0]  # "Pt John Doe, 55y, history of T2DM. Meds: Metformin 500mg."
    for wrong in ({**case.expected, "medicationStatement": [{"medication": "Metformine", "dose": None}]},
                  {**case.expected, "patient": {"name": "John Doe", "ageInt": 56, "gender": None}},
                  {**case.expected, "reasonCode": [{"text": "ohn"}]}):
        ids = tokenizer(dumps(wrong), add_special_tokens=False)["input_ids"]
        assert _refused_at(constraint_tokenizer, "grounded", case, ids) is not None, wrong
        assert _refused_at(constraint_tokenizer, "schema", case, ids) is None  # any value goes under `schema`
    spaced = json.dumps(case.expected, ensure_ascii=False)  # ", " and ": " separators: not the training form
    spaced_ids = tokenizer(spaced, add_special_tokens=False)["input_ids"]
    assert _refused_at(constraint_tokenizer, "schema", case, spaced_ids) is not None



def test_a_free_answer_is_replayed_as_far_as_the_grammar_allows_it(tokenizer, constraint_tokenizer):
    """Constrained decoding takes a free decoding as its own answer (BatchConstraint.replay) where the
    grammar allows each of its tokens and then its stop; elsewhere it agrees up to the first token the
    grammar forbids, and its matcher stands there for decoding to go on."""
    case = SEED[0]
    right = _answer_ids(tokenizer, case, "all")[:-1]  # without its <|im_end|>
    invented = {**case.expected, "medicationStatement": [{"medication": "Metformine", "dose": None}]}
    wrong = _answer_ids(tokenizer, replace(case, expected=invented), "all")[:-1]
    forbidden = _refused_at(constraint_tokenizer, "grounded", case, wrong)
    # the third stops before its JSON closes; the fourth ran to its bound without a stop
    rows, stopped = [right, wrong, right[:-3], right], [True, True, True, False]
    grounded = BatchConstraint.build(constraint_tokenizer, "grounded", [case.note] * 4, [10_000] * 4)
    assert grounded.replay(rows, stopped) == [None, forbidden, len(right) - 3, len(right)]
    assert (grounded.stats.replayed_rows, grounded.stats.replayed_tokens) == (1, 3 * len(right) - 3 + forbidden)
    import torch

    rest = grounded.rows([1])  # the invented drug's row, its matcher at the forbidden token
    logits = torch.zeros(1, constraint_tokenizer.size)
    rest.mask_([0], logits, [forbidden])
    assert logits[0, wrong[forbidden]] == float("-inf") and logits[0, right[forbidden]] == 0
    schema = BatchConstraint.build(constraint_tokenizer, "schema", [case.note] * 3, [10_000] * 3)
    assert schema.replay(rows[:3], stopped[:3]) == [None, None, len(right) - 3]  # any value goes under `schema`

def test_grammars_are_built_for_any_note():
    for note in ("", "!!!", '"\\', "<script>alert('x')</script>", "a" * 5000, "Ünïcödé 名前 🙂 55"):
        grounded_grammar(note)
    assert "%llguidance" in schema_grammar()


# --------------------------------------------------------------------------- a random model, constrained


@pytest.fixture(scope="module")
def random_model(tokenizer):
    """A tiny randomly initialised Llama with the real tokenizer: it has learned nothing, so whatever
    it writes under a constraint is the constraint's doing."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    return HFBackend.from_model(tokenizer, model, {"model": "random-llama-32", "seed": 0})


NOTES = st.one_of(
    st.text(min_size=1, max_size=20),  # very short, any unicode
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=120),
    st.lists(st.sampled_from(["Pt", "Oleg", "Novak", "61y", '"quoted"', "back\\slash", "<script>", "Amoxicillin",
                              "500mg", "0.5", "fifty", "five", ",", ".", "\n", "\t", "名前", "🙂"]),
             min_size=1, max_size=60).map(" ".join),  # long: a random model writes to its bound, then closes
).filter(str.strip)


@pytest.mark.slow  # a random model writes to its bound and then closes: seconds per example
@settings(max_examples=profiles.model_examples(), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(notes=st.lists(NOTES, min_size=1, max_size=3))
def test_grounded_decoding_of_a_random_model_is_valid_and_grounded(random_model, notes):
    """In batches, any note: one schema-valid JSON document whose every value is in the note."""
    for note, gen in zip(notes, random_model.generate(notes, GenerationSettings(decoding="grounded")), strict=True):
        assert gen.error is None and gen.stopped, (note, gen)
        obj = json.loads(gen.text)
        assert is_valid(obj) and dumps(obj) == gen.text, gen.text  # valid, and in the training serialisation
        assert all(g.grounded for g in ground_summary(obj, note)), (note, gen.text)


def test_a_note_that_cannot_close_in_its_bound_gets_an_error_and_the_others_go_on(random_model, monkeypatch):
    """With no room left to close, the random model's answer to one note cannot finish: that note gets
    a clear error and the notes batched with it are answered."""
    import harness.models

    stuck, fine = "stuck note with many words in it", "Pt John Doe, 55y."
    real = harness.models.close_reserve
    monkeypatch.setattr(harness.models, "close_reserve", lambda note: 0 if note == stuck else real(note))
    out = random_model.generate([stuck, fine], GenerationSettings(decoding="grounded", max_new_tokens=3))
    assert out[0].error == "the constrained answer did not close within 3 new tokens" and not out[0].stopped
    assert out[1].error is None and is_valid(json.loads(out[1].text))


@pytest.mark.parametrize("decoding", ["schema", "grounded"])
def test_a_random_model_is_closed_at_its_bound(random_model, decoding):
    """A model that never ends on its own is steered to close at its bound: inside a `schema` string,
    brackets are text, so a string must be ended by its quote first (once a bug: 8 of 19 notes looped)."""
    notes = [c.note for c in (*SEED, *CURATED)][:8]
    for out in random_model.generate(notes, GenerationSettings(decoding=decoding)):
        assert out.error is None and is_valid(json.loads(out.text)), out
