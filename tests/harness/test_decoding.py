"""The greedy decoding loop on the real embedded model: same tokens as transformers' `generate`, per-row
bounds, and finished rows leave the batch."""

import pytest

from harness.decoding import greedy_decode
from harness.models import HFBackend, ModelSpec
from scenarios import SEED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend():
    return HFBackend(ModelSpec(quantization="none"))


def decode(backend, rows, bounds):
    return greedy_decode(backend.model, rows, bounds, backend.stop_ids, backend.tokenizer.pad_token_id)


def test_matches_transformers_generate(backend):
    import torch

    for row in backend.encode([c.note for c in SEED[:2]]):
        ref = backend.model.generate(
            input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
            max_new_tokens=32, do_sample=False, eos_token_id=backend.stop_ids,
            pad_token_id=backend.tokenizer.pad_token_id,
        )[0, len(row):].tolist()
        assert decode(backend, [row], [32])[0].tokens == [t for t in ref if t not in backend.stop_ids]


def test_each_row_keeps_its_own_bound_and_its_alone_output(backend):
    rows = backend.encode([c.note for c in SEED[:3]])
    bounds = [4, 12, 24]
    together = decode(backend, rows, bounds)
    for row, bound, got in zip(rows, bounds, together, strict=True):
        assert len(got.tokens) <= bound
        assert got.tokens == decode(backend, [row], [bound])[0].tokens


def test_finished_rows_cost_no_further_compute(backend):
    """After the prefill (every prompt but its last token), every row in every forward pass yields a
    token that is kept or ends the row: a finished row is never computed again (transformers'
    `generate` computes all rows until the last one ends)."""
    sizes = []
    hook = backend.model.register_forward_pre_hook(
        lambda _m, _a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        out = decode(backend, backend.encode([c.note for c in SEED[:3]]), [3, 9, 20])
    finally:
        hook.remove()
    prefill, steps = sizes[0], sizes[1:]
    assert prefill == 3
    assert sum(steps) == sum(len(d.tokens) + d.stopped for d in out)
    assert steps[0] == 3 and steps[-1] == 1 and steps == sorted(steps, reverse=True)
