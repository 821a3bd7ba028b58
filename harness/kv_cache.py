"""The decoding loop's KV cache: each layer's keys and values written in place into a buffer that grows
by doubling.

transformers' DynamicCache concatenates every new token's keys and values onto the whole cache: a copy
of the cache per layer per token (7 % of a batched generation's CPU time, torch.profiler, 16 test
notes). Here a token costs a write of its own keys and values, and a row leaving the batch a copy of
what is written. Attention reads the same values, so the outputs are the same bits (a test checks the
logits against DynamicCache's). Measured interleaved (benchmarks/generation.py --kv-cache): 7 % more
tokens/s for the base model's long answers, 3 % for the tuned model's. Keeping the cache in float64,
for the harness's float64 attention (harness.numerics), saved its casts but slowed attention over the
strided views as much. Imported by harness.decoding's loop only: it needs transformers.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose `keys` and `values` are views of a buffer with spare capacity. It serves what
    harness.decoding's loop calls (update, get_seq_length, batch_select_indices); cropping, beam
    reordering and offloading are not for it."""

    def __init__(self):
        super().__init__()
        self.length = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
        end = self.length + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2]:
            self._keys = self._grown(self._keys, key_states, end)
            self._values = self._grown(self._values, value_states, end)
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def _grown(self, buffer: torch.Tensor | None, states: torch.Tensor, end: int) -> torch.Tensor:
        """A buffer for at least `end` positions (twice the old capacity where that is more), holding
        the old one's written positions."""
        capacity = end if buffer is None else max(end, 2 * buffer.shape[-2])
        grown = states.new_empty((*states.shape[:2], capacity, states.shape[-1]))
        if buffer is not None:
            grown[:, :, :self.length] = buffer[:, :, :self.length]
        return grown

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._keys is None:
            return
        self._keys, self._values = self._selected(self._keys, indices), self._selected(self._values, indices)
        self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]

    def _selected(self, buffer: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """`indices`' rows of `buffer` at the same capacity, copying only the written positions (a row
        leaves the batch at every answer's end, so this runs about once per row)."""
        selected = buffer.new_empty((len(indices), *buffer.shape[1:]))
        torch.index_select(buffer[:, :, :self.length], 0, indices, out=selected[:, :, :self.length])
        return selected


def growing_cache(model) -> DynamicCache:
    """A cache for `model` whose full-attention layers grow in place; sliding-window layers (which drop
    old positions) stay transformers' own."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
