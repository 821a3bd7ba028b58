"""The one prompt format, shared by training and inference so the two can never drift apart.

A short explicit system message replaces the chat template's generic default one (SmolLM2 adds
"You are a helpful AI assistant named SmolLM..."), which would cost tokens in every example.
"""

from __future__ import annotations

SYSTEM_PROMPT = "Convert the clinical note into a SunriseEMRClinicalSummary JSON object."


def messages(note: str, answer: str | None = None) -> list[dict]:
    out = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": note}]
    if answer is not None:
        out.append({"role": "assistant", "content": answer})
    return out


def render_prompt(tokenizer, note: str) -> str:
    """The text a model sees before it answers."""
    return tokenizer.apply_chat_template(messages(note), tokenize=False, add_generation_prompt=True)
