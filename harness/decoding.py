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

Lookahead: a decode step of a few rows costs about what reading every weight once costs, whatever the
rows, and an answer here is mostly copied (values from the note, keys from the schema, a loop from
itself). So decoding also feeds, behind each row's chosen token, the tokens that followed the same
few tokens before (`Drafts`), and keeps each one the model's argmax agrees with: several tokens a step,
the same tokens as one a step wherever a position's logits do not depend on how many positions a step
computes, which the batch-invariant numerics give (harness.numerics). A constrained row masks each fed
position's logits with its grammar as it stands after the tokens kept before that position, so its
matcher only ever consumes kept tokens and never has to take one back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
# The same rule in characters, for a served model, whose answer comes as text: whitespace aside, the
# embedded model's answers hold about 3 characters a token (2.7 the base model's, 3.0 a tuned one's).
# Part of a served model's identity.
TEXT_LOOP = (96, 96, 4)
# Lookahead (`greedy_decode`): a step's drafted tokens, at most LOOKAHEAD[1] a row, are as many as keep
# its products to about LOOKAHEAD[0] rows; a decode step of a few rows costs what reading every weight
# costs, whatever the rows, while a wide batch's steps already cost by the row, so it drafts nothing.
LOOKAHEAD = (32, 8)  # products' rows, most drafted tokens per row
DRAFT_NGRAM = 3  # the longest tail `Drafts` looks up


def whitespace_tokens(tokenizer) -> frozenset[int]:
    """The tokens that write nothing but whitespace, which `repeats` leaves out."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return frozenset(i for i, text in enumerate(texts) if not text.strip())


def repeats(tokens: list[int], ignored: frozenset[int]) -> bool:
    """Whether `tokens`, without the `ignored` (whitespace) ones, end in a loop (LOOP). Whitespace is
    left out because a model nesting one structure in another loops with a growing indent."""
    longest, _, copies = LOOP
    tail: list[int] = []
    for token in reversed(tokens):
        if token not in ignored:
            tail.append(token)
            if len(tail) == copies * longest:
                break
    tail.reverse()
    return ends_in_loop(tail, LOOP)


def ends_in_loop(tail: Sequence, rule: tuple[int, int, int]) -> bool:
    """Whether `tail` ends in `rule`'s loop: (longest cycle, least run, copies), as LOOP and TEXT_LOOP."""
    longest, least, copies = rule
    n = len(tail)
    for cycle in range(1, longest + 1):
        run = max((copies - 1) * cycle, least)
        if run + cycle > n:
            return False
        if tail[n - 1] == tail[n - 1 - cycle] and tail[n - run:] == tail[n - run - cycle:n - cycle]:
            return True
    return False


class LoopWatch:
    """Text as it arrives (a served model's stream), watched for the point where it starts repeating
    itself by TEXT_LOOP: `feed` gives the length of the text up to that point, once it is there. The
    text is checked character by character, so the point does not depend on how it came in pieces."""

    def __init__(self):
        self.length = 0
        self._written: list[str] = []  # its characters, whitespace aside

    def feed(self, piece: str) -> int | None:
        longest, _, copies = TEXT_LOOP
        for char in piece:
            self.length += 1
            if char.isspace():
                continue
            self._written.append(char)
            if ends_in_loop("".join(self._written[-copies * longest:]), TEXT_LOOP):
                return self.length
        return None


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


def lookahead_width(rows: int) -> int:
    """How many drafted tokens each of `rows` rows feeds a step (LOOKAHEAD)."""
    products, most = LOOKAHEAD
    return max(0, min(most, products // rows - 1))


def _ngram_ends(tokens: list[int], first: int = 1):
    """(n-gram, where it ends) for each run of 1 to DRAFT_NGRAM tokens of `tokens` that ends at `first` or
    later and before the last token (what follows it is the draft)."""
    for end in range(first, len(tokens)):
        for n in range(1, min(DRAFT_NGRAM, end) + 1):
            yield tuple(tokens[end - n:end]), end


class Drafts:
    """Prompt lookup for the rows of one decoding: the `width` tokens that followed an earlier occurrence
    of a row's last DRAFT_NGRAM tokens (fewer where those occur nowhere earlier): in the row's reference
    (`references[row]`, a constrained row's free answer to the same prompt, which it writes again but
    where its grammar forbids a token), at the occurrence nearest the row's place in its answer; else
    the latest in the row's own context (the note that an answer copies from, the cycle that a looping
    answer repeats); else in other answers (a schema's skeleton). Each sequence is indexed once, as it
    grows, so a draft costs a few lookups however long the contexts."""

    def __init__(self, answers: Sequence[list[int]] = (), references: Sequence[list[int]] = ()):
        self._answers: dict[tuple[int, ...], tuple[list[int], int]] = {}  # n-gram: (answer, where it ends)
        self._own: dict[int, dict[tuple[int, ...], int]] = {}  # row: n-gram: where it last ends
        self._indexed: dict[int, int] = {}  # row: the context's length indexed so far
        self._references = list(references)
        self._reference_ends: list[dict[tuple[int, ...], list[int]]] = []  # row: n-gram: where each ends
        for reference in self._references:
            ends: dict[tuple[int, ...], list[int]] = {}
            for gram, end in _ngram_ends(reference):
                ends.setdefault(gram, []).append(end)
            self._reference_ends.append(ends)
        for answer in answers:
            self.add_answer(answer)

    def add_answer(self, answer: list[int]) -> None:
        for gram, end in _ngram_ends(answer):
            self._answers[gram] = (answer, end)

    def draft(self, row: int, context: list[int], width: int, written: int = 0) -> list[int]:
        """`written`: how many of the context's last tokens are the row's answer so far."""
        own = self._own.setdefault(row, {})
        # Occurrences ending before the context's last token only: the tail itself is no earlier occurrence.
        for gram, end in _ngram_ends(context, self._indexed.get(row, 0) + 1):
            own[gram] = end
        self._indexed[row] = max(self._indexed.get(row, 0), len(context) - 1)
        reference = self._reference_ends[row] if row < len(self._reference_ends) else {}
        for n in range(min(DRAFT_NGRAM, len(context)), 0, -1):
            tail = tuple(context[-n:])
            if tail in reference:
                end = min(reference[tail], key=lambda e: abs(e - written))
                return self._references[row][end:end + width]
            if tail in own:
                return context[own[tail]:own[tail] + width]
            if tail in self._answers:
                answer, end = self._answers[tail]
                return answer[end:end + width]
        return []


def greedy_decode(model, rows: list[list[int]], bounds: list[int], stop_ids: list[int], pad_id: int,
                  ignored: frozenset[int], constraint: BatchConstraint | None = None,
                  written: list[list[int]] | None = None, lookahead: bool = False,
                  answers: Sequence[list[int]] = (), references: Sequence[list[int]] = (),
                  on_tokens: Callable[[int, list[int]], bool | None] | None = None) -> list[Decoded]:
    """Decode `rows` (token ids of prompts) together; row i gets at most `bounds[i]` new tokens and
    stops where it repeats itself (`repeats`, whitespace tokens `ignored`). `written[i]`: new tokens
    row i already has (which its matcher has consumed); decoding goes on after them, and they count
    towards its bound.

    `lookahead`: a step feeds each row's chosen token and, behind it, tokens drafted from `references[i]`
    (row i's free answer, for a constrained row), the row's own context, the batch's finished answers or
    `answers` (`Drafts`), and keeps each drafted token the model's argmax (under the row's grammar) agrees
    with, so one step can yield several tokens. The tokens are greedy decoding's only where a position's
    logits do not depend on how many positions a step computes: under the batch-invariant numerics
    (harness.numerics), which the caller checks.

    `on_tokens(i, tokens)`: called after each step for every row i that took tokens in it, with all
    of the row's new tokens so far (a server streams them). Where it returns True, nobody reads the row
    any more (a client closed its stream): the row stops there, as at its bound."""
    import torch

    from harness.kv_cache import GrowingLayer, growing_cache

    device = model.device
    if written is not None:
        rows = [row + done for row, done in zip(rows, written, strict=True)]
    input_ids, mask, positions = left_padded(rows, pad_id, device)
    stops = set(stop_ids)
    tokens: list[list[int]] = [list(done) for done in written] if written is not None else [[] for _ in rows]
    stopped = [False] * len(rows)
    looped = [False] * len(rows)
    grew: set[int] = set()  # rows that took tokens in this step
    cache = growing_cache(model)
    # Not with a sliding window: that counts positions, and rejected drafts would take its room.
    lookahead = lookahead and all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    drafter = Drafts(answers, references) if lookahead else None

    def loops(row: int) -> bool:
        """Whether the row has just started repeating itself; a constrained one then starts closing."""
        if looped[row] or not repeats(tokens[row], ignored):
            return False
        looped[row] = True
        if constraint is None:
            return True
        constraint.close_from[row] = min(constraint.close_from[row], len(tokens[row]))
        return False

    def take(row: int, tok: int, dead: bool) -> bool:
        """Give `row` the model's choice; whether the row goes on after it."""
        if dead:
            constraint.errors[row] = "the grammar allows no token here"
            return False
        if tok in stops:
            stopped[row] = True
            return False
        if constraint is not None and not constraint.advance(row, tok):
            return False
        tokens[row].append(tok)
        grew.add(row)
        return len(tokens[row]) < bounds[row] and not (tok not in ignored and loops(row))

    for row in range(len(rows)):  # written tokens that loop already: as if the loop had just been written
        loops(row)
    active = list(range(len(rows)))  # which original row each batch row is
    with torch.inference_mode():
        # The prompts' last token goes through a decode step, not the prefill: the prefill's logits
        # come from a strided slice of its hidden states, whose layout (and so the matrix product's
        # last bits) depends on the batch's width; a decode step's does not (harness.numerics).
        out = model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                    cache=cache, use_cache=True, logits_to_keep=1)
        out = model(input_ids=input_ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                    cache=out.cache, use_cache=True)
        cache = out.cache
        fed_at = positions[:, -1:]  # the position of the first token each row fed the last step
        drafts: list[list[int]] = [[] for _ in rows]  # what each row fed behind it
        while True:
            # Position by position, the argmax after each fed token, for as long as the next fed token is
            # that argmax; a grammar masks a position as it stands after the tokens taken before it.
            free_choices = out.logits.argmax(-1).tolist() if constraint is None else None
            going, ends = list(range(len(active))), {}  # batch rows still agreeing; j: (token, tokens kept)
            for i in range(out.logits.shape[1]):
                if not going:
                    break
                if constraint is not None:
                    logits = out.logits[going, i]
                    constraint.mask_([active[j] for j in going], logits, [len(tokens[active[j]]) for j in going])
                    dead, choices = (logits.max(-1).values == float("-inf")).tolist(), logits.argmax(-1).tolist()
                else:
                    dead, choices = [False] * len(going), [free_choices[j][i] for j in going]
                agreeing = []
                for j, tok, no_token in zip(going, choices, dead, strict=True):
                    row = active[j]
                    if not take(row, tok, no_token):
                        if lookahead:
                            drafter.add_answer(tokens[row])
                    elif i == len(drafts[j]) or tok != drafts[j][i]:
                        ends[j] = (tok, i + 1)
                    else:
                        agreeing.append(j)
                going = agreeing
            if on_tokens is not None:
                for row in sorted(grew):
                    if on_tokens(row, tokens[row]):
                        ends.pop(active.index(row), None)
            grew.clear()
            keep = sorted(ends)
            if not keep:
                break
            chosen, kept = [ends[j][0] for j in keep], [ends[j][1] for j in keep]
            index = torch.tensor(keep, device=device)
            if len(keep) < len(active):
                cache.batch_select_indices(index)
                mask, fed_at = mask[index], fed_at[index]
                active = [active[j] for j in keep]
            kept_t = torch.tensor(kept, device=device)[:, None]
            fed = out.logits.shape[1]
            if fed > 1:  # drafted positions the model disagreed with stay in the cache, masked like padding
                mask[:, -fed:] = (torch.arange(fed, device=device) < kept_t).long()
            fed_at = fed_at + kept_t
            width = lookahead_width(len(active)) if lookahead else 0
            drafts = [drafter.draft(row, rows[row] + tokens[row], width, len(tokens[row])) if width else []
                      for row in active]
            width = max(map(len, drafts))
            fed_ids = [[tok, *d, *[pad_id] * (width - len(d))] for tok, d in zip(chosen, drafts, strict=True)]
            mask = torch.cat([mask, mask.new_ones((len(active), width + 1))], dim=-1)
            out = model(input_ids=torch.tensor(fed_ids, device=device), attention_mask=mask,
                        position_ids=fed_at + torch.arange(width + 1, device=device), cache=cache, use_cache=True)
    errors = constraint.errors if constraint is not None else {}
    return [Decoded(t, s, errors.get(i), looped[i]) for i, (t, s) in enumerate(zip(tokens, stopped, strict=True))]
