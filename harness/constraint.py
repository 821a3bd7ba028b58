"""Grammar-constrained greedy decoding: llguidance token masks applied inside the project's own loop.

Each row of a batch has its own matcher (the `grounded` grammar is per note). Before every argmax
the allowed tokens of all active rows are computed together (llguidance's parallel executor) and
every other logit is set to -inf, so batching and dropping finished rows work as in free decoding.
A stop token is allowed only where the grammar is complete, and once it is complete only a stop
token is, so a constrained answer ends the moment its JSON closes.

Closing: a row that reaches its ordinary bound (where free decoding would cut it off) is not cut;
it is steered to close instead: among the allowed tokens it may only take those that end a string,
a list or an object (or a comma before a number's unit) where there are any, a string first. Every value of the
grammar is short or closable at its next word end, so a row then finishes within `close_reserve`
tokens; a row that does not (it cannot, unless the grammar is broken) gets an error, and the
other rows go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from harness.grammar import grammar_for
from harness.grounding import note_chunks
from harness.schema import dumps, empty_summary

# The tokens a closing row prefers, in order: those that end a string (a quote, perhaps with brackets
# after it: inside a string, brackets alone are text and would never end it), those that end a list
# or object, and those that also pass a comma (after a number, before its unit).
_CLOSERS = (
    lambda text: text.startswith('"') and set(text) <= set('"]}'),
    lambda text: set(text) <= set("]}"),
    lambda text: set(text) <= set('"]},'),
)


@dataclass
class ConstraintStats:
    """Where a constrained batch spent its time outside the model."""

    mask_seconds: float = 0.0  # computing and applying token masks
    masked_steps: int = 0  # rows x steps that were masked
    closed_rows: int = 0  # rows steered to close at their bound
    replayed_rows: int = 0  # answers taken whole from the same prompt's free decoding (BatchConstraint.replay)
    replayed_tokens: int = 0  # tokens taken from it, the whole answers' and those before the first forbidden one


class ConstraintTokenizer:
    """llguidance's view of a Hugging Face tokenizer (built once per model: it takes about a second),
    with the token classes that closing prefers."""

    def __init__(self, tokenizer, stop_ids: list[int]):
        import llguidance
        import llguidance.hf
        import numpy as np
        import torch

        self.ll = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(stop_ids))
        self.size = self.ll.vocab_size
        self.executor = llguidance.LLExecutor()
        self.stop_ids = list(stop_ids)
        self.closers = []
        texts = [self.ll.decode_bytes([i]).decode("utf-8", "replace") for i in range(self.size)]
        for closes in _CLOSERS:
            ids = [i for i, text in enumerate(texts) if text and not self.ll.is_special_token(i) and closes(text)]
            flags = np.zeros(self.size, dtype=bool)
            flags[ids + self.stop_ids] = True
            self.closers.append(torch.from_numpy(flags))

    def matcher(self, grammar: str):
        import llguidance

        m = llguidance.LLMatcher(self.ll, grammar, log_level=0)
        if m.is_error():
            raise ValueError(f"grammar rejected by llguidance: {m.get_error()}")
        return m


def close_reserve(note: str) -> int:
    """Tokens a row may take past its bound while it closes: the skeleton written a character a
    token, plus the longest word of the note (a span can only end at a word end), plus slack."""
    longest = max((len(c) for c in note_chunks(note)), default=0)
    return len(dumps(empty_summary())) + longest + 64


@dataclass
class BatchConstraint:
    """The matchers of one batch's rows, and the masking the decoding loop calls."""

    vocab: ConstraintTokenizer
    matchers: list
    close_from: list[int]  # a row's length at which it starts closing (its ordinary bound)
    stats: ConstraintStats = field(default_factory=ConstraintStats)
    errors: dict[int, str] = field(default_factory=dict)

    @classmethod
    def build(cls, vocab: ConstraintTokenizer, decoding: str, notes: list[str], bounds: list[int],
              stats: ConstraintStats | None = None) -> BatchConstraint:
        """`stats`: where to add this batch's costs (a backend keeps one across batches)."""
        return cls(vocab, [vocab.matcher(grammar_for(decoding, note)) for note in notes], list(bounds),
                   stats if stats is not None else ConstraintStats())

    def mask_(self, rows: list[int], logits, lengths: list[int]) -> None:
        """Set the logits of tokens the grammars forbid to -inf, in place; `rows[i]` is the original
        row of batch row i, `lengths[i]` how many tokens it has written."""
        import llguidance.torch
        import numpy as np
        import torch

        t0 = time.perf_counter()
        bitmask = torch.empty(llguidance.torch.get_bitmask_shape(len(rows), self.vocab.size), dtype=torch.int32)
        llguidance.torch.fill_next_token_bitmask_par(
            self.vocab.executor, [(self.matchers[r], i) for i, r in enumerate(rows)], bitmask)
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :self.vocab.size]
        allowed = torch.from_numpy(bits).bool()
        for i, r in enumerate(rows):
            if lengths[i] >= self.close_from[r]:
                if lengths[i] == self.close_from[r]:
                    self.stats.closed_rows += 1
                for closers in self.vocab.closers:
                    narrowed = allowed[i] & closers
                    if narrowed.any():
                        allowed[i] = narrowed
                        break
        allowed = allowed.to(logits.device, non_blocking=True)
        width = min(logits.shape[-1], self.vocab.size)
        logits[:, :width].masked_fill_(~allowed[:, :width], float("-inf"))
        logits[:, width:] = float("-inf")
        self.stats.mask_seconds += time.perf_counter() - t0
        self.stats.masked_steps += len(rows)

    def replay(self, decodes: list[list[int]], stopped: list[bool]) -> list[int | None]:
        """How much of each row's free greedy decoding of the same prompt (`decodes[i]`; `stopped[i]`:
        it ended at a stop token) greedy decoding under the row's grammar writes too. Masking only
        removes tokens, so an argmax it allows stays the argmax: the rows agree up to the first token
        the grammar forbids where it stands. None: the whole answer, its stop included; else the number
        of tokens agreed on, which the row's matcher has consumed, so decoding can go on from there."""
        import torch

        agreed: list[int | None] = [0] * len(decodes)
        active, step = list(range(len(decodes))), 0
        while active:
            allowed = torch.zeros(len(active), self.vocab.size)
            self.mask_(active, allowed, [step] * len(active))
            allowed = allowed == 0
            keep = []
            for i, r in enumerate(active):
                if step == len(decodes[r]):
                    if stopped[r] and bool(allowed[i, self.vocab.stop_ids].all()):
                        agreed[r] = None
                    continue
                token = decodes[r][step]
                if token < self.vocab.size and bool(allowed[i, token]) and self.advance(r, token):
                    agreed[r] = step + 1
                    keep.append(r)
            active, step = keep, step + 1
        self.stats.replayed_rows += agreed.count(None)
        self.stats.replayed_tokens += sum(len(d) if n is None else n for d, n in zip(decodes, agreed, strict=True))
        return agreed

    def rows(self, keep: list[int]) -> BatchConstraint:
        """The constraint of the rows `keep` alone, in that order, their matchers as they stand."""
        return BatchConstraint(self.vocab, [self.matchers[r] for r in keep], [self.close_from[r] for r in keep],
                               self.stats)

    def advance(self, row: int, token: int) -> bool:
        """Feed a chosen token to the row's matcher; False (and an error) if the grammar refuses it."""
        t0 = time.perf_counter()
        ok = self.matchers[row].consume_token(token)
        self.stats.mask_seconds += time.perf_counter() - t0
        if not ok:
            self.errors[row] = f"the grammar refused token {token}: {self.matchers[row].get_error()}"
        return ok

    def complete(self, row: int) -> bool:
        return self.matchers[row].is_accepting()
