"""Greedy decoding of a left-padded batch that drops each row from the batch as soon as it ends.

transformers' `generate` keeps computing rows that have already stopped until the last row stops, so
one note that loops to its bound makes the whole batch run to that bound. Here a finished row leaves
the KV cache at once, and each row has its own bound, so a batch costs about what its rows need and a
note's output does not depend on the bound of the notes batched with it.

Plain greedy: the model's `generation_config` (sampling, repetition penalties) is deliberately not
applied, so the output is argmax decoding and nothing else. A `BatchConstraint` (harness.constraint)
masks the logits before each argmax for the constrained decoding modes.

A row that repeats itself (`repeats`) stops there, as it would at its bound: greedy decoding that has
written the same cycle of tokens four times over almost always writes it until the bound (the base
model: 91 of the suite's 119 answers), so the rest costs time and tells nothing. A constrained row is
steered to close instead, as at its bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.constraint import BatchConstraint

# Part of a model's identity, so outputs cached under another decoding loop are regenerated.
# 2: the prompt's last token goes through a decode step; 3: a row that repeats itself stops.
DECODER = "greedy-drop-finished/3"
# A row repeats itself when its last tokens, whitespace aside, are LOOP[2] copies of one cycle of at
# most LOOP[0] tokens, and at least LOOP[1] tokens each equal the token one cycle before. A true answer
# never does: that takes five identical medication entries in a row, or seven identical reasons.
# Part of the identity.
LOOP = (32, 32, 4)  # longest cycle, least run, copies


def whitespace_tokens(tokenizer) -> frozenset[int]:
    """The tokens that write nothing but whitespace, which `repeats` leaves out."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return frozenset(i for i, text in enumerate(texts) if not text.strip())


def repeats(tokens: list[int], ignored: frozenset[int]) -> bool:
    """Whether `tokens`, without the `ignored` (whitespace) ones, end in a loop (LOOP). Whitespace is
    left out because a model nesting one structure in another loops with a growing indent."""
    longest, least, copies = LOOP
    tail: list[int] = []
    for token in reversed(tokens):
        if token not in ignored:
            tail.append(token)
            if len(tail) == copies * longest:
                break
    tail.reverse()
    n = len(tail)
    for cycle in range(1, longest + 1):
        run = max((copies - 1) * cycle, least)
        if run + cycle > n:
            return False
        if tail[n - run:] == tail[n - run - cycle:n - cycle]:
            return True
    return False


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]  # new tokens, without the stop token
    stopped: bool  # ended at a stop token (False: reached its bound, or repeated itself)
    error: str | None = None  # a constrained row that could not finish
    looped: bool = False  # it repeated itself (`repeats`): stopped there, or, constrained, closed from there


def left_padded(rows: list[list[int]], pad_id: int, device=None):
    """`rows` (token ids) as one left-padded batch: input ids, attention mask and position ids."""
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    # Positions count real tokens only, as `generate` does, so a padded row decodes like an unpadded one.
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def greedy_decode(model, rows: list[list[int]], bounds: list[int], stop_ids: list[int], pad_id: int,
                  ignored: frozenset[int], constraint: BatchConstraint | None = None,
                  written: list[list[int]] | None = None) -> list[Decoded]:
    """Decode `rows` (token ids of prompts) together; row i gets at most `bounds[i]` new tokens and
    stops where it repeats itself (`repeats`, whitespace tokens `ignored`). `written[i]`: new tokens
    row i already has (which its matcher has consumed); decoding goes on after them, and they count
    towards its bound."""
    import torch

    from harness.kv_cache import growing_cache

    device = model.device
    if written is not None:
        rows = [row + done for row, done in zip(rows, written, strict=True)]
    input_ids, mask, positions = left_padded(rows, pad_id, device)
    stops = set(stop_ids)
    tokens: list[list[int]] = [list(done) for done in written] if written is not None else [[] for _ in rows]
    stopped = [False] * len(rows)
    looped = [False] * len(rows)

    def loops(row: int) -> bool:
        """Whether the row has just started repeating itself; a constrained one then starts closing."""
        if looped[row] or not repeats(tokens[row], ignored):
            return False
        looped[row] = True
        if constraint is None:
            return True
        constraint.close_from[row] = min(constraint.close_from[row], len(tokens[row]))
        return False

    for row in range(len(rows)):  # written tokens that loop already: as if the loop had just been written
        loops(row)
    active = list(range(len(rows)))  # which original row each batch row is
    with torch.inference_mode():
        # The prompts' last token goes through a decode step, not the prefill: the prefill's logits
        # come from a strided slice of its hidden states, whose layout (and so the matrix product's
        # last bits) depends on the batch's width; a decode step's does not (harness.numerics).
        out = model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                    cache=growing_cache(model), use_cache=True, logits_to_keep=1)
        out = model(input_ids=input_ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                    cache=out.cache, use_cache=True)
        cache = out.cache
        next_pos = positions[:, -1:] + 1
        while True:
            logits = out.logits[:, -1]
            if constraint is not None:
                constraint.mask_(active, logits, [len(tokens[r]) for r in active])
                dead = (logits.max(-1).values == float("-inf")).tolist()
            chosen = logits.argmax(-1)
            keep = []
            for j, tok in enumerate(chosen.tolist()):
                row = active[j]
                if constraint is not None and dead[j]:
                    constraint.errors[row] = "the grammar allows no token here"
                    continue
                if tok in stops:
                    stopped[row] = True
                    continue
                if constraint is not None and not constraint.advance(row, tok):
                    continue
                tokens[row].append(tok)
                if len(tokens[row]) < bounds[row] and not (tok not in ignored and loops(row)):
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, chosen, next_pos = mask[index], chosen[index], next_pos[index]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_pos,
                        cache=cache, use_cache=True)
            next_pos = next_pos + 1
    errors = constraint.errors if constraint is not None else {}
    return [Decoded(t, s, errors.get(i), looped[i]) for i, (t, s) in enumerate(zip(tokens, stopped, strict=True))]
