"""The prompts, shared by training and inference so the two can never drift apart.

`trained`: what the adapters are trained and run with. A short explicit system message replaces the
chat template's generic default one (SmolLM2 adds "You are a helpful AI assistant named SmolLM..."),
which would cost tokens in every example.

`engineered`: the zero-shot baseline (the `prompted` role), written as a user would before
fine-tuning: the schema, the rules, and worked examples whose concepts are all from the training
vocabulary, so no held-out concept leaks into the prompt.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from harness.hashing import sha256_text
from harness.schema import GENDERS, SCHEMA, UNITS

SYSTEM_PROMPT = "Convert the clinical note into a SunriseEMRClinicalSummary JSON object."
Prompt = Literal["trained", "engineered"]

# (note, answer) pairs; tests/harness/test_prompt.py checks each answer is the schema-valid truth.
EXAMPLES = (
    ("Pt John Doe, 55y, history of T2DM. Meds: Metformin 500mg.",
     '{"resourceType":"SunriseEMRClinicalSummary","patient":{"name":"John Doe","ageInt":55,"gender":null},'
     '"reasonCode":[{"text":"T2DM"}],"medicationStatement":[{"medication":"Metformin","dose":{"value":500,'
     '"unit":"mg"}}]}'),
    ("Mary Walker, female, seen for asthma and heartburn. On Salbutamol 100 mcg and Omeprazole 20mg daily.",
     '{"resourceType":"SunriseEMRClinicalSummary","patient":{"name":"Mary Walker","ageInt":null,'
     '"gender":"female"},"reasonCode":[{"text":"asthma"},{"text":"heartburn"}],"medicationStatement":'
     '[{"medication":"Salbutamol","dose":{"value":100,"unit":"mcg"}},{"medication":"Omeprazole","dose":'
     '{"value":20,"unit":"mg"}}]}'),
    ("72 yo man c/o knee pain. Started Allopurinol, dose not stated.",
     '{"resourceType":"SunriseEMRClinicalSummary","patient":{"name":null,"ageInt":72,"gender":"male"},'
     '"reasonCode":[{"text":"knee pain"}],"medicationStatement":[{"medication":"Allopurinol","dose":null}]}'),
)

_SCHEMA_TEXT = json.dumps({k: v for k, v in SCHEMA.items() if not k.startswith("$")}, separators=(",", ":"))
ENGINEERED_PROMPT = "\n".join([
    "You convert a clinical note into exactly one JSON object of the SunriseEMRClinicalSummary schema. "
    "Write only the JSON object: no prose before or after it, no code fences.",
    "",
    f"The JSON Schema: {_SCHEMA_TEXT}",
    "",
    "Rules:",
    "- Copy every text value exactly as the note writes it. Never invent, correct, translate or expand anything.",
    "- patient.name: the patient's name as written, or null when the note gives none.",
    "- patient.ageInt: the age in years as an integer only when the note states it, else null. Never guess.",
    f"- patient.gender: {' or '.join(GENDERS)} only when the note states it, else null.",
    '- reasonCode: one {"text": ...} per condition, symptom or reason for the visit.',
    "- medicationStatement: one entry per medication; never two drugs in one entry. dose is "
    f'{{"value": number, "unit": one of {", ".join(UNITS)}}}, split from the note ("500mg" is 500 and "mg"), '
    "or null when the note gives no dose.",
    "- Use exactly the schema's keys and add no others.",
    "",
    "Examples:",
    *(f"Note: {note}\nJSON: {answer}" for note, answer in EXAMPLES),
])
PROMPTS: dict[str, str] = {"trained": SYSTEM_PROMPT, "engineered": ENGINEERED_PROMPT}
_VERSIONS = {name: sha256_text(text)[:12] for name, text in PROMPTS.items()}  # hashed once, read per cache key


def prompt_version(prompt: str = "trained") -> str:
    """Part of every cache key: a changed prompt text regenerates what was cached under the old one."""
    return _VERSIONS[prompt]


def messages(note: str, answer: str | None = None, prompt: str = "trained") -> list[dict]:
    out = [{"role": "system", "content": PROMPTS[prompt]}, {"role": "user", "content": note}]
    if answer is not None:
        out.append({"role": "assistant", "content": answer})
    return out


def render_prompt(tokenizer, note: str, prompt: str = "trained") -> str:
    """The text a model sees before it answers."""
    return tokenizer.apply_chat_template(messages(note, prompt=prompt), tokenize=False, add_generation_prompt=True)


_NOTE = "\x00note\x00"  # stands for the note while the template around it is rendered


def _around_note(tokenizer, prompt: str) -> tuple[str, str]:
    """The rendered prompt's text before and after the note."""
    before, after = render_prompt(tokenizer, _NOTE, prompt).split(_NOTE)
    return before, after


def prompt_ids(tokenizer, note: str, prompt: str = "trained", split_note_spaces: bool = False) -> list[int]:
    """The token ids of `render_prompt`. With `split_note_spaces`, the note is cut at its spaces before
    BPE, each space its own token: the note's words are then the tokens an answer writes when a value
    begins with them (BPE gives ' vomiting' in running text but 'v' 'om' 'iting' after a quote), so
    copying a value is copying tokens. The text is the same; only the note's token boundaries differ.
    An adapter trained so must be read so (its manifest says it; README, "The note cut at its spaces")."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    if not split_note_spaces:
        return encode(render_prompt(tokenizer, note, prompt))
    before, after = _around_note(tokenizer, prompt)
    return encode(before) + [i for piece in re.split("( )", note) for i in encode(piece)] + encode(after)


def read_prompt_ids(tokenizer, ids: list[int], split_note_spaces: bool = False) -> tuple[str, Prompt] | None:
    """(note, prompt) whose `prompt_ids` are exactly `ids`, else None: a server that takes prompts as
    token ids (`sunrise serve`'s /v1/completions) answers only prompts its adapter reads as trained."""
    text = tokenizer.decode(ids)
    for prompt in PROMPTS:
        before, after = _around_note(tokenizer, prompt)
        if text.startswith(before) and text.endswith(after) and len(text) >= len(before) + len(after):
            note = text[len(before):len(text) - len(after)]
            if prompt_ids(tokenizer, note, prompt, split_note_spaces) == list(ids):
                return note, prompt  # type: ignore[return-value]
    return None
