"""The greedy decoding loop: when an answer repeats itself (fast), and on the real embedded model (slow)
the same tokens as transformers' `generate`, per-row bounds, finished rows leave the batch, a looping
row stops where it starts repeating, and the KV cache gives DynamicCache's logits."""

import pytest

from harness.decoding import (
    DRAFT_NGRAM,
    LOOKAHEAD,
    LOOP,
    TEXT_LOOP,
    Drafts,
    LoopWatch,
    greedy_decode,
    left_padded,
    lookahead_width,
    repeats,
    whitespace_tokens,
)
from harness.models import GenerationSettings, HFBackend, ModelSpec
from scenarios import SEED

SPACE, NEWLINE = frozenset({0}), 0


@pytest.mark.parametrize("cycle", [1, 5, 11, 16, LOOP[0]])
def test_a_cycle_repeats_once_its_copies_cover_the_least_run(cycle):
    unit = list(range(100, 100 + cycle))
    run = max((LOOP[2] - 1) * cycle, LOOP[1])
    looping = [7, 8, 9] + unit * (run // cycle + 2)
    first = next(n for n in range(len(looping) + 1) if repeats(looping[:n], SPACE))
    assert first == 3 + run + cycle  # the first cycle, then `run` tokens that each match one cycle back
    assert not repeats(looping[:first - 1], SPACE) and repeats(looping, SPACE)


def test_a_cycle_longer_than_the_longest_or_broken_by_a_token_does_not_repeat():
    assert not repeats(list(range(1, LOOP[0] + 2)) * 4, SPACE)
    broken = [1, 2, 3] * 30
    broken[-20] = 4
    assert not repeats(broken, SPACE)


def test_whitespace_in_a_cycle_is_left_out():
    """A model that nests the same object deeper and deeper loops with a growing indent."""
    nested, unit = [], [11, 12, 13, 14]
    for depth in range(1, 20):
        nested += [NEWLINE] * depth + unit
    assert repeats(nested, SPACE) and not repeats([t + 1 for t in nested], frozenset())


def test_no_true_answer_repeats_itself_however_it_is_tokenised():
    """Every expected answer of the seed, curated, validation and test notes, tokenised as BPE writes it
    and as split-quote training teaches it, is not cut at any point; five identical medications are."""
    from transformers import AutoTokenizer

    from harness.models import resolve_base
    from scenarios import CURATED
    from scenarios.splits import generate_split
    from train.trainer import IGNORE, encode_example

    tokenizer = AutoTokenizer.from_pretrained(resolve_base("embedded").folder)
    ignored = whitespace_tokens(tokenizer)
    assert tokenizer.encode(" ")[0] in ignored and tokenizer.encode("a")[0] not in ignored
    cases = [*SEED, *CURATED, *generate_split("val", 50), *generate_split("test", 100)]
    import json

    for case in cases:
        answer = json.dumps(case.expected, separators=(",", ":"))
        for split in ("none", "all"):
            example = encode_example(tokenizer, case.note, answer, split)
            ids = [i for i, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE]
            assert not any(repeats(ids[:n], ignored) for n in range(1, len(ids) + 1)), (case.id, split)
    entry = '{"medication":"Paxlovid","dose":{"value":300,"unit":"mg"}}'
    lists = {n: tokenizer.encode('{"medicationStatement":[' + ",".join([entry] * n) + "]}") for n in (4, 5)}
    cut = {n: any(repeats(ids[:end], ignored) for end in range(1, len(ids) + 1)) for n, ids in lists.items()}
    assert cut == {4: False, 5: True}


def _cut(text: str, piece: int) -> int | None:
    watch = LoopWatch()
    return next((end for start in range(0, len(text), piece) if (end := watch.feed(text[start:start + piece]))),
                None)


LOOPING = '{"patient":{"name":"Aisha Novak"},"reasonCode":[' + '{"text":"temp"},' * 12


def test_a_streamed_answer_is_cut_where_it_starts_repeating_however_it_arrives():
    """A served answer comes as text in pieces of any size; it is cut at the first character where its
    last TEXT_LOOP[1] characters, whitespace aside, each equal the one a cycle back, wherever the pieces end."""
    first = next(n for n in range(len(LOOPING) + 1) if _cut(LOOPING[:n], len(LOOPING)))
    cycle = len('{"text":"temp"},')
    assert first == LOOPING.index('{"text":"temp"}') + cycle + max((TEXT_LOOP[2] - 1) * cycle, TEXT_LOOP[1])
    assert {_cut(LOOPING, piece) for piece in (1, 3, 4, 7, 50, len(LOOPING))} == {first}
    nested = "".join("\n" + "  " * depth + '{"data":' for depth in range(40))  # a growing indent
    assert _cut(nested, 5) is not None and _cut(LOOPING[:first - 1], 1) is None


def test_no_true_answer_is_cut_as_text_and_five_identical_medications_are():
    import json

    from scenarios import CURATED
    from scenarios.splits import generate_split

    for case in [*SEED, *CURATED, *generate_split("val", 50), *generate_split("test", 100)]:
        for indent in (None, 2):
            assert _cut(json.dumps(case.expected, indent=indent), 1) is None, case.id
    entry = '{"medication":"Paxlovid","dose":{"value":300,"unit":"mg"}}'
    cut = {n: _cut('{"medicationStatement":[' + ",".join([entry] * n) + "]}", 1) is not None for n in (4, 5)}
    assert cut == {4: False, 5: True}


def draft(context, width, answers=()):
    return Drafts(answers).draft(0, context, width)


def test_a_draft_copies_what_followed_the_latest_earlier_occurrence_of_the_tail():
    note = [5, 6, 7, 8, 9, 10]
    assert draft(note + [1, 6, 7], 3) == [8, 9, 10]  # the tail 6 7 is in the note: copy on from there
    assert draft([1, 2, 3, 9, 1, 2, 4, 1, 2], 2) == [4, 1]  # the latest occurrence, not the first
    assert draft([1, 2, 3, 4, 3], 8) == [4, 3]  # a shorter tail where the longest occurs nowhere earlier
    assert draft([1, 2, 3], 4) == [] and draft([7], 4) == []  # the last token is new


def test_a_draft_falls_back_on_other_answers_for_a_tail_the_context_lacks():
    answer = [40, 41, 42, 43, 44]
    assert draft([1, 2, 41, 42], 2, [answer]) == [43, 44]
    assert draft([41, 42, 9, 41, 42], 2, [answer]) == [9, 41]  # the row's own context first
    assert draft([1, 2, 3, 40, 41, 42], 2, [[40, 41, 42, 43]]) == [43]
    assert draft([1] * DRAFT_NGRAM, 0) == []


def test_a_constrained_rows_drafts_come_first_from_its_reference_where_its_answer_stands():
    """A reference (the row's free answer) repeats its keys, so the occurrence nearest the row's place in
    its answer is the one drafted from; before the row's own context; each row its own reference."""
    prompt, reference = [7, 8], [1, 2, 30, 1, 2, 31, 1, 2, 32]
    drafts = Drafts(answers=[[1, 2, 40]], references=[reference, []])
    assert drafts.draft(0, prompt + [1, 2], 1, written=2) == [30]
    assert drafts.draft(0, prompt + [1, 2, 30, 1, 2], 1, written=5) == [31]
    assert drafts.draft(0, prompt + [1, 2, 30, 1, 2, 33, 1, 2], 1, written=8) == [32]
    assert drafts.draft(1, prompt + [1, 2], 1, written=2) == [40]  # no reference: as before


def test_a_rows_drafts_follow_its_context_as_it_grows():
    drafts = Drafts()
    context = [1, 2, 3, 4, 1, 2]
    assert drafts.draft(0, context, 2) == [3, 4]
    context += [3, 9, 1, 2]
    assert drafts.draft(0, context, 2) == [3, 9]  # the latest occurrence, indexed since
    assert drafts.draft(1, [7, 1, 2], 2) == []  # each row its own context
    drafts.add_answer(context)
    assert drafts.draft(1, [7, 1, 2], 2) == [3, 9]  # a finished answer serves the others


def test_lookahead_drafts_less_the_more_rows_a_step_decodes():
    products, most = LOOKAHEAD
    widths = [lookahead_width(rows) for rows in range(1, 2 * products)]
    assert widths[0] == most and widths == sorted(widths, reverse=True)
    assert all((w + 1) * rows <= products for rows, w in enumerate(widths, 1) if w)
    assert lookahead_width(products) == 0


@pytest.fixture(scope="module")
def backend():
    return HFBackend(ModelSpec(quantization="none"))


def decode(backend, rows, bounds, lookahead=False):
    return greedy_decode(backend.model, rows, bounds, backend.stop_ids, backend.tokenizer.pad_token_id,
                         backend.whitespace_tokens(), lookahead=lookahead)


@pytest.mark.slow
def test_a_looping_answer_stops_where_it_starts_repeating(backend):
    """The base model given a note of one word repeated: the answer is what `generate` writes, cut where the
    loop has run four times over, and says so; a true answer of the same batch is unaffected."""
    import torch

    note = "bed bed bed bed bed bed bed bed"
    out = backend.generate([note, SEED[0].note], GenerationSettings())
    rows = backend.encode([note])
    bound = backend.max_new_tokens(len(rows[0]), GenerationSettings())
    ref = backend.model.generate(
        input_ids=torch.tensor(rows), attention_mask=torch.ones(1, len(rows[0]), dtype=torch.long),
        max_new_tokens=bound, do_sample=False, eos_token_id=backend.stop_ids,
        pad_token_id=backend.tokenizer.pad_token_id)[0, len(rows[0]):].tolist()
    cut = decode(backend, rows, [bound])[0]
    assert cut.looped and not cut.stopped and len(cut.tokens) < bound == len(ref)
    assert ref[:len(cut.tokens)] == cut.tokens and repeats(ref, backend.whitespace_tokens())
    assert out[0].looped and not out[0].stopped and out[0].new_tokens == len(cut.tokens)
    assert backend.identity["loop"] == list(LOOP)
    assert not out[1].looped and out[1].text == backend.generate([SEED[0].note], GenerationSettings())[0].text


@pytest.mark.slow
def test_matches_transformers_generate(backend):
    import torch

    for row in backend.encode([c.note for c in SEED[:2]]):
        ref = backend.model.generate(
            input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
            max_new_tokens=32, do_sample=False, eos_token_id=backend.stop_ids,
            pad_token_id=backend.tokenizer.pad_token_id,
        )[0, len(row):].tolist()
        assert decode(backend, [row], [32])[0].tokens == [t for t in ref if t not in backend.stop_ids]


@pytest.mark.slow
def test_each_row_keeps_its_own_bound_and_its_alone_output(backend):
    rows = backend.encode([c.note for c in SEED[:3]])
    bounds = [4, 12, 24]
    together = decode(backend, rows, bounds)
    for row, bound, got in zip(rows, bounds, together, strict=True):
        assert len(got.tokens) <= bound
        assert got.tokens == decode(backend, [row], [bound])[0].tokens


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_row_nobody_reads_stops_where_it_stands_and_the_others_go_on(backend):
    """`on_tokens` answering True for a row (its client closed the stream) ends that row there: it is not
    computed again, and the other rows give what they give alone."""
    rows = backend.encode([c.note for c in SEED[:3]])
    alone = decode(backend, rows, [20, 20, 20])
    sizes = []
    hook = backend.model.register_forward_pre_hook(
        lambda _m, _a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        out = greedy_decode(backend.model, rows, [20, 20, 20], backend.stop_ids, backend.tokenizer.pad_token_id,
                            backend.whitespace_tokens(), on_tokens=lambda i, tokens: i == 1 and len(tokens) >= 3)
    finally:
        hook.remove()
    assert out[1].tokens == alone[1].tokens[:3] and not out[1].stopped and len(alone[1].tokens) > 3
    assert [out[0].tokens, out[2].tokens] == [alone[0].tokens, alone[2].tokens]
    assert sum(sizes[1:]) == sum(len(d.tokens) + d.stopped for d in out)  # the row was not computed again
    whole, cut = (backend.generate([SEED[0].note], GenerationSettings(), listener=listener)[0]
                  for listener in (None, lambda i, text: len(text) >= 12))  # the listener a server gives
    assert whole.text.startswith(cut.text) and 12 <= len(cut.text) < len(whole.text) and not cut.stopped


@pytest.mark.slow
def test_the_growing_cache_gives_dynamic_caches_logits(backend):
    """harness.kv_cache writes in place what transformers' DynamicCache concatenates: the same logits, to
    the bit, over a left-padded prefill, decode steps that outgrow its buffer, and a row leaving the batch."""
    import torch
    from transformers import DynamicCache

    from harness.kv_cache import GrowingLayer, growing_cache

    rows = backend.encode([c.note for c in SEED[:3]])
    width = max(len(r) for r in rows)

    def steps(cache):
        ids, mask, positions = left_padded(rows, backend.tokenizer.pad_token_id)
        logits = []
        with torch.inference_mode():
            out = backend.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                use_cache=True)
            for step in range(width + 2):  # past twice the prefill's length: the buffer grows
                logits.append(out.logits[:, -1])
                chosen, positions = out.logits[:, -1].argmax(-1), positions[:, -1:] + 1
                if step == 2:
                    keep = torch.tensor([0, 2])
                    cache.batch_select_indices(keep)
                    mask, chosen, positions = mask[keep], chosen[keep], positions[keep]
                mask = torch.cat([mask, mask.new_ones((len(mask), 1))], dim=-1)
                out = backend.model(input_ids=chosen[:, None], attention_mask=mask, position_ids=positions,
                                    cache=cache, use_cache=True)
        return logits

    grown = growing_cache(backend.model)
    assert all(torch.equal(a, b) for a, b in zip(steps(DynamicCache(config=backend.model.config)), steps(grown),
                                                  strict=True))
    layer = grown.layers[0]
    assert isinstance(layer, GrowingLayer) and layer.keys.dtype == backend.model.dtype
    assert layer.get_seq_length() == 2 * width + 2 and layer._keys.shape[-2] > 2 * width


@pytest.mark.slow
def test_lookahead_gives_greedy_decodings_tokens_in_fewer_steps(backend):
    """Drafted tokens the model agrees with are kept, several a step, and the tokens are exactly those of
    decoding one token a step: for the base model's long and looping answers, alone and batched (where
    rows keep different numbers of drafted tokens and the rest stay in the cache, masked)."""
    assert backend.identity["numerics"] == "batch-invariant" and backend.lookahead
    rows = backend.encode([c.note for c in SEED[:4]] + ["fever fever fever fever"])
    bounds = [96, 60, 80, 96, 120]
    plain = decode(backend, rows, bounds)
    steps = []
    hook = backend.model.register_forward_pre_hook(lambda _m, _a, kw: steps.append(kw["input_ids"].shape),
                                                   with_kwargs=True)
    try:
        ahead = decode(backend, rows, bounds, lookahead=True)
        alone = [decode(backend, [row], [bound], lookahead=True)[0] for row, bound in zip(rows[:2], bounds[:2],
                                                                                            strict=True)]
    finally:
        hook.remove()
    assert ahead == plain and alone == plain[:2]
    assert any(d.looped for d in plain)
    new_tokens = sum(len(d.tokens) for d in plain) + sum(len(d.tokens) for d in plain[:2])
    decode_steps = [shape for shape in steps if shape[1] <= LOOKAHEAD[1] + 1][1:]
    assert any(shape[1] > 1 for shape in decode_steps)
    assert len(steps) < new_tokens / 2


@pytest.mark.slow
def test_constrained_lookahead_gives_the_grammars_tokens_in_fewer_steps(backend):
    """Under a grammar each fed position is masked as the grammar stands after the tokens kept before it:
    the same tokens, errors and closings as one token a step, whatever the drafts. Drafted from the answers
    themselves (every draft right) and from the free answers (most wrong: the base model writes no JSON
    freely), batched and alone; the base model runs every grounded answer to its bound and closes it."""
    from harness.constraint import BatchConstraint

    settings = GenerationSettings(decoding="grounded")
    notes = [c.note for c in SEED[:3]]
    rows = backend.encode(notes)
    bounds = [backend.max_new_tokens(len(row), settings) for row in rows]
    limits = [backend.token_limit(note, len(row), settings) for note, row in zip(notes, rows, strict=True)]

    def grounded(keep=(0, 1, 2), lookahead=False, references=()):
        constraint = BatchConstraint.build(backend.constraint_tokenizer(), "grounded", [notes[i] for i in keep],
                                           [bounds[i] for i in keep])
        out = greedy_decode(backend.model, [rows[i] for i in keep], [limits[i] for i in keep], backend.stop_ids,
                            backend.tokenizer.pad_token_id, backend.whitespace_tokens(), constraint,
                            lookahead=lookahead, references=[references[i] for i in keep] if references else ())
        return out, constraint.stats

    plain, stats = grounded()
    assert all(d.stopped and d.error is None for d in plain) and stats.closed_rows == len(notes)
    free = [d.tokens for d in decode(backend, rows, bounds)]
    assert all(f[:len(d.tokens)] != d.tokens for f, d in zip(free, plain, strict=True))
    steps = []
    hook = backend.model.register_forward_pre_hook(lambda _m, _a, kw: steps.append(kw["input_ids"].shape),
                                                   with_kwargs=True)
    try:
        right = grounded(lookahead=True, references=[d.tokens for d in plain])
    finally:
        hook.remove()
    assert right[0] == plain and right[1].closed_rows == len(notes)
    assert len(steps) < sum(len(d.tokens) for d in plain) / 4
    assert grounded(lookahead=True, references=free)[0] == plain
    assert grounded((1,), lookahead=True, references=free)[0] == plain[1:2]


@pytest.mark.slow
def test_a_sliding_window_model_decodes_one_token_a_step():
    """A sliding window keeps a number of positions, which rejected drafts would take: no lookahead there."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                                             max_position_embeddings=128)).eval()
    widths = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        out = greedy_decode(model, [[1, 2, 3, 1, 2, 3, 1, 2]], [24], [], 0, frozenset(), lookahead=True)
    finally:
        hook.remove()
    assert len(out[0].tokens) == 24 and widths[2:] == [1] * (len(widths) - 2)
