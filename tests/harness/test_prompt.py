"""The prompts: the engineered zero-shot prompt teaches with correct, grounded examples of training
concepts only, and each prompt keys the cache apart."""

import json
import re

import pytest

from harness.checks import run_checks
from harness.generation import Generator
from harness.models import FakeBackend, GenerationSettings
from harness.prompt import ENGINEERED_PROMPT, EXAMPLES, messages, prompt_version
from harness.schema import dumps, is_valid
from harness.scoring import score_case
from scenarios import HELD_OUT


@pytest.mark.parametrize("note, answer", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_each_worked_example_is_the_exact_grounded_answer(note, answer):
    obj = json.loads(answer)
    assert is_valid(obj) and answer == dumps(obj)  # the compact serialisation the adapters write
    verdicts = run_checks(score_case(answer, obj, note))
    assert all(v.ok for v in verdicts.values()), {k: v.reason for k, v in verdicts.items() if not v.ok}


def test_no_held_out_concept_leaks_into_the_prompt():
    for kind, terms in HELD_OUT.terms().items():
        leaked = [t for t in terms if re.search(rf"\b{re.escape(t)}\b", ENGINEERED_PROMPT, re.IGNORECASE)]
        assert not leaked, f"held-out {kind} in the engineered prompt: {leaked}"


def test_each_prompt_keys_the_cache_apart():
    trained, engineered = (Generator(FakeBackend(), GenerationSettings(prompt=p), cache=False)
                           for p in ("trained", "engineered"))
    assert trained.key("Pt A") != engineered.key("Pt A")
    assert prompt_version("trained") != prompt_version("engineered")
    assert messages("Pt A", prompt="engineered")[0]["content"] == ENGINEERED_PROMPT
    with pytest.raises(ValueError, match="prompt must be one of"):
        GenerationSettings(prompt="clever")
