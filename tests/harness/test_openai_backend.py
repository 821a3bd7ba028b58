"""The HTTP backend (the official openai SDK over real HTTP) against a local fake OpenAI-compatible
server: retries, per-note errors, concurrency, identity, structured output and the key kept secret."""

import json
import time

import pytest

from harness.errors import AdapterError, HarnessError, ModelNotFoundError
from harness.generation import Generator
from harness.grammar import grammar_for
from harness.models import GenerationSettings, ModelSpec, load_backend
from harness.openai_backend import HTTPOptions, OpenAIBackend, ServedModel
from harness.prompt import prompt_ids
from harness.schema import SCHEMA, dumps
from scenarios import SEED
from tests.fakes.openai_server import KEY, FakeOpenAI
from tests.fakes.servers import refusing_port, running

NOTES = [c.note for c in SEED[:4]]


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = FakeOpenAI(answers={c.note: dumps(c.expected) for c in SEED})
    with running(server.app()) as url:
        server.url = f"{url}/v1"
        yield server


def backend(fake, model="served-base", **options) -> OpenAIBackend:
    return OpenAIBackend(ServedModel(model, fake.url), HTTPOptions(**{"max_retries": 2, **options}))


def test_names_parse_and_say_what_is_wrong():
    assert ServedModel.parse("openai:Qwen/Qwen2.5-3B-Instruct@http://h:8000/v1/") == ServedModel(
        "Qwen/Qwen2.5-3B-Instruct", "http://h:8000/v1")
    assert ServedModel.parse("openai:cand#ab12", "http://h/v1") == ServedModel("cand", "http://h/v1", "ab12")
    for bad in ("openai:@http://h/v1", "openai:model", "openai:model@h:8000"):
        with pytest.raises(ValueError, match="openai:MODEL@URL"):
            ServedModel.parse(bad)


def test_outputs_come_back_in_order_with_the_request_the_harness_promises(fake):
    got = backend(fake).generate(NOTES, GenerationSettings())
    assert [g.text for g in got] == [dumps(c.expected) for c in SEED[:4]]
    assert all(g.stopped and g.error is None for g in got)
    sent = fake.requests[0]
    assert sent["temperature"] == 0 and sent["seed"] == 0 and sent["response_format"] == {"type": "text"}
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["max_tokens"] >= 3 * len(sent["messages"][-1]["content"])  # the per-note bound, never below it


def test_a_looping_answer_is_cut_where_it_starts_repeating_and_its_stream_closed(fake):
    """The server would stream 30,000 characters of a loop; the answer keeps what comes before the point
    where it starts repeating (harness.decoding.LoopWatch), the stream is closed there, so the server
    stops sending, and the answer says it looped. An answer that does not loop streams whole, with the
    server's token count."""
    from harness.decoding import LoopWatch

    looping = '{"resourceType":"SunriseEMRClinicalSummary","reasonCode":[' + '{"text":"temp"},' * 2000
    fake.answers[NOTES[0]], fake.chunk_delay = looping, 0.001
    got = backend(fake, concurrency=1).generate(NOTES[:2], GenerationSettings())
    assert all(r["stream"] and r["stream_options"] == {"include_usage": True} for r in fake.requests)
    assert got[0].text == looping[:LoopWatch().feed(looping)] and len(got[0].text) < 300
    assert got[0].looped and not got[0].stopped and got[0].error is None
    assert (got[1].text, got[1].looped, got[1].stopped) == (dumps(SEED[1].expected), False, True)
    deadline = time.monotonic() + 10
    while len(fake.streamed) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    cut_stream, whole_stream = fake.streamed if len(fake.streamed) == 2 else (None, None)
    assert cut_stream is not None and cut_stream < 1000, fake.streamed  # of 7,514 chunks
    assert got[1].new_tokens == whole_stream  # the server's count (the fake's: a chunk a token)


def test_a_listener_that_wants_no_more_closes_the_stream(fake):
    """A listener answering True (its reader has gone, as `sunrise serve` in front of this backend says)
    closes the note's stream where it stands: the server stops sending, the note is not finished."""
    fake.answers[NOTES[0]], fake.chunk_delay = dumps(SEED[0].expected) * 50, 0.001
    heard = []
    got = backend(fake, concurrency=1).generate(NOTES[:1], GenerationSettings(),
                                                lambda i, text: heard.append(text) or len(heard) == 3)
    assert got[0].text == heard[-1] and len(heard) == 3 and not got[0].stopped and got[0].error is None
    deadline = time.monotonic() + 10
    while not fake.streamed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.streamed and fake.streamed[0] < 1000, fake.streamed  # of 2,688 chunks


def test_a_constrained_answer_is_never_cut_only_marked(fake):
    """A grammar, not the cut, has to close a constrained answer: it is read to its end."""
    looping = '{"reasonCode":[' + '{"text":"temp"},' * 20 + '{"text":"x"}]}'
    fake.answers[NOTES[0]] = looping
    got = backend(fake).generate(NOTES[:1], GenerationSettings(decoding="schema"))[0]
    assert (got.text, got.looped, got.stopped) == (looping, True, True)


def test_constrained_modes_are_sent_as_structured_output_requests(fake):
    b = backend(fake)
    b.generate(NOTES[:1], GenerationSettings(decoding="schema"))
    b.generate(NOTES[:1], GenerationSettings(decoding="grounded"))
    schema_request, grounded_request = fake.requests
    assert schema_request["response_format"]["json_schema"]["schema"] == SCHEMA
    assert grounded_request["structured_outputs"] == {"grammar": grammar_for("grounded", NOTES[0])}


def test_server_specific_fields_go_with_every_request_and_into_the_identity(fake):
    """llama-cpp-python's server is not greedy at temperature 0 unless asked (repeat penalty 1.1)."""
    b = backend(fake, extra_body={"repeat_penalty": 1})
    b.generate(NOTES[:1], GenerationSettings())
    b.generate(NOTES[:1], GenerationSettings(decoding="grounded"))
    free, grounded = fake.requests
    assert free["repeat_penalty"] == 1 and grounded["repeat_penalty"] == 1 and "structured_outputs" in grounded
    assert b.identity["request"] == {"temperature": 0, "seed": 0, "repeat_penalty": 1}
    assert b.identity != backend(fake).identity  # another request, another cache key
    with pytest.raises(ValueError, match="may not set max_tokens"):
        HTTPOptions(extra_body={"max_tokens": 10})


def test_identity_names_server_and_model_and_stays_stable(fake):
    """/v1/models' `created` and permission ids change per request; they must not change cache keys."""
    first, second = backend(fake).identity, backend(fake).identity
    assert first == second
    assert first["model"] == "openai:served-base" and first["base_url"] == fake.url
    assert first["served"] == {"id": "served-base", "object": "model", "owned_by": "fake", "root": "served-base"}


def test_429_with_retry_after_and_500_are_retried(fake):
    fake.faults = {NOTES[0]: ["429"], NOTES[1]: ["500", "500"]}
    got = backend(fake).generate(NOTES[:2], GenerationSettings())
    assert [g.error for g in got] == [None, None]
    assert [json.loads(g.text) for g in got] == [c.expected for c in SEED[:2]]
    assert sum(r["messages"][-1]["content"] == NOTES[1] for r in fake.requests) == 3


@pytest.mark.parametrize("fault, words", [
    ("500", "the server answered 500: internal error"),
    ("slow", "no answer within 0.5 s"),
    ("malformed", "unreadable answer"),
])
def test_a_failure_is_that_notes_error_the_others_go_on_and_nothing_failed_is_cached(fake, tmp_path, fault, words):
    from harness.cache import GenerationCache

    fake.faults = {NOTES[1]: [fault] * 3}
    fake.delay = 2.0
    generator = Generator(backend(fake, timeout_s=0.5, max_retries=1), GenerationSettings(),
                          cache=GenerationCache(tmp_path))
    results = generator.run(NOTES)
    assert words in results[1].error and results[1].generation.transient
    assert [r.error for i, r in enumerate(results) if i != 1] == [None, None, None]
    fake.faults = {}
    again = generator.run(NOTES)  # the failed note is asked again; the others come from the cache
    assert again[1].error is None and not again[1].generation.cached
    assert all(r.generation.cached for i, r in enumerate(again) if i != 1)


def test_requests_in_flight_are_bounded(fake):
    notes = [f"Pt {i}, 40y. Meds: Aspirin 81mg." for i in range(12)]
    backend(fake, concurrency=3).generate(notes, GenerationSettings())
    assert fake.most_in_flight == 3


def test_a_wrong_key_is_refused_up_front_and_never_repeated(fake, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-that-must-not-leak")
    with pytest.raises(HarnessError, match="refused the API key") as err:
        backend(fake)
    assert "sk-wrong" not in str(err.value)


def test_a_key_the_server_quotes_back_is_redacted_from_the_notes_error(fake):
    b = backend(fake)
    b._key = "sk-revoked-mid-run"  # the server now gets a key it rejects and quotes back
    b.client = b.client.with_options(api_key=b._key)
    error = b.generate(NOTES[:1], GenerationSettings())[0].error
    assert "401" in error and "[API key]" in error and "sk-revoked" not in error


def test_an_unknown_model_and_a_refused_connection_are_clear(fake):
    with pytest.raises(ModelNotFoundError, match="does not serve 'nope'; it serves: cand, served-base"):
        backend(fake, model="nope")
    with refusing_port() as port, pytest.raises(ModelNotFoundError, match="could not reach"):
        OpenAIBackend(ServedModel("m", f"http://127.0.0.1:{port}/v1"), HTTPOptions(max_retries=0))


def test_an_adapter_that_reads_notes_cut_at_their_spaces_is_sent_token_ids(fake, tmp_path, tokenizer,
                                                                          usual_adapter):
    """A server tokenizes a chat message its own way; an adapter trained on notes cut at their spaces
    (its folder named after '#') gets its prompts as the token ids it was trained on, with the same
    bound and structured-output request, and its identity says so."""
    from harness.models import inspect_adapter
    from harness.settings import REFERENCE_ADAPTER

    folder = REFERENCE_ADAPTER
    ids = [prompt_ids(tokenizer, n, split_note_spaces=True) for n in NOTES]
    fake.answers_by_ids = {tuple(i): dumps(c.expected) for i, c in zip(ids, SEED, strict=False)}

    cut = load_backend(ModelSpec(base=f"openai:served-base@{fake.url}", adapter=f"openai:cand#{folder}"))
    assert cut.identity["adapter_sha256"] == inspect_adapter(folder).sha256
    assert cut.identity["note_tokens"] == "split at spaces" and "/v1/completions" in cut.identity["prompt_as"]
    got = cut.generate(NOTES, GenerationSettings())
    assert [g.text for g in got] == [dumps(c.expected) for c in SEED[:4]] and all(g.stopped for g in got)
    sent = sorted(fake.requests, key=lambda r: ids.index(r["prompt"]))
    assert [r["prompt"] for r in sent] == ids and all("messages" not in r for r in sent)
    assert ids[0] != prompt_ids(tokenizer, NOTES[0])  # not what the server would make of the text
    assert sent[0]["response_format"] == {"type": "text"} and sent[0]["temperature"] == 0
    assert sent[0]["max_tokens"] == cut.max_new_tokens(NOTES[0], GenerationSettings())
    cut.generate(NOTES[:1], GenerationSettings(decoding="grounded"))
    assert fake.requests[-1]["structured_outputs"] == {"grammar": grammar_for("grounded", NOTES[0])}
    # Read the usual way (its manifest says so), the same name goes by chat.
    plain = load_backend(ModelSpec(base=f"openai:served-base@{fake.url}", adapter=f"openai:cand#{usual_adapter}"))
    assert "note_tokens" not in plain.identity and plain.identity != cut.identity
    plain.generate(NOTES[:1], GenerationSettings())
    assert "messages" in fake.requests[-1]
    with pytest.raises(AdapterError, match="the sha256 of the adapter the server loaded, or a copy of its folder"):
        load_backend(ModelSpec(base=f"openai:served-base@{fake.url}", adapter=f"openai:cand#{tmp_path}/nowhere"))


def test_a_served_base_takes_a_served_adapter_on_the_same_server(fake):
    tuned = load_backend(ModelSpec(base=f"openai:served-base@{fake.url}", adapter="openai:cand#beef"))
    assert tuned.identity["model"] == "openai:cand" and tuned.identity["adapter_sha256"] == "beef"
    with pytest.raises(AdapterError, match="takes a served adapter"):
        load_backend(ModelSpec(base=f"openai:served-base@{fake.url}", adapter="fixtures/reference-adapter"))
    with pytest.raises(AdapterError, match="needs a served base model"):
        load_backend(ModelSpec(adapter="openai:cand"))


def _hub_cache_with_tokenizer_only(root, repo_id: str):
    """A Hugging Face cache holding `repo_id` as the embedded model's tokenizer and config, no weights."""
    import shutil

    from harness.models import resolve_base

    source = resolve_base("embedded").folder
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{source}/{name}", snapshot / name)


def test_a_cut_note_adapter_on_a_hub_base_needs_its_tokenizer_only(fake, tmp_path, tokenizer, monkeypatch):
    """An adapter whose base is a hub id (Qwen2.5-3B, served by vLLM) gets token ids made with that base's
    tokenizer alone, from the local cache: its weights are neither needed nor fetched. Where the
    tokenizer is not to be had, the error says what to download."""
    import shutil

    import harness.openai_backend
    from harness.settings import REFERENCE_ADAPTER

    adapter = tmp_path / "adapter"
    shutil.copytree(REFERENCE_ADAPTER, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someorg/tok-only"}))
    hub = tmp_path / "hub"
    _hub_cache_with_tokenizer_only(hub, "someorg/tok-only")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_weights(base, *args, **kwargs):
        raise AssertionError(f"resolve_base({base!r}) fetches a hub model's weights")

    monkeypatch.setattr(harness.openai_backend, "resolve_base", no_weights)
    cut = load_backend(ModelSpec(base=f"openai:served-base@{fake.url}", adapter=f"openai:cand#{adapter}"))
    cut.generate(NOTES[:1], GenerationSettings())
    assert fake.requests[-1]["prompt"] == prompt_ids(tokenizer, NOTES[0], split_note_spaces=True)

    shutil.rmtree(hub)
    with pytest.raises(ModelNotFoundError, match="'someorg/tok-only'.s tokenizer .*huggingface-cli download"):
        load_backend(ModelSpec(base=f"openai:served-base@{fake.url}", adapter=f"openai:cand#{adapter}"))
