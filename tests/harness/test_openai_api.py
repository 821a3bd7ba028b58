"""`sunrise serve` in the OpenAI protocol, over real HTTP, with scripted backends: the official SDK and
the harness's own HTTP backend as clients, requests that arrive together batched, clear errors."""

import concurrent.futures
import threading
import time

import httpx
import openai
import pytest

from harness.generation import Generator
from harness.models import FakeBackend, GenerationSettings
from harness.openai_backend import HTTPOptions, OpenAIBackend, ServedModel
from harness.prompt import SYSTEM_PROMPT, messages
from harness.schema import SCHEMA, dumps
from harness.server import create_app
from harness.settings import REFERENCE_ADAPTER
from harness.transcribe import Transcriber
from scenarios import SEED
from tests.fakes.paced import Paced
from tests.fakes.servers import running


class SlowFake(FakeBackend):
    """A scripted model whose every call takes a while, so concurrent requests pile up behind it;
    it records the decoding and bound of every call."""

    def __init__(self, outputs, name, seconds=0.3):
        super().__init__(outputs, name)
        self.seconds, self.settings, self.lock = seconds, [], threading.Lock()

    def generate(self, notes, settings, listener=None):
        assert self.lock.acquire(blocking=False), "the model was called from two threads at once"
        try:
            self.settings.append(settings)
            time.sleep(self.seconds)
            return super().generate(notes, settings, listener)
        finally:
            self.lock.release()


@pytest.fixture
def served():
    tuned = SlowFake({c.note: dumps(c.expected) for c in SEED}, "tuned")
    base = SlowFake(lambda note: "Sure! Here is the JSON: {}", "base", seconds=0.0)
    app = create_app({"tuned": tuned, "base": base}, Transcriber(api_key=None),
                     GenerationSettings(decoding="grounded"))
    with running(app) as url:
        yield tuned, f"{url}/v1"


def test_the_official_sdk_lists_the_models_and_gets_the_same_answer(served):
    tuned, url = served
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tuned", "base"]
    answer = client.chat.completions.create(model="tuned", messages=messages(SEED[0].note), temperature=0)
    assert answer.choices[0].message.content == dumps(SEED[0].expected)
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens > 0
    assert tuned.settings[-1].decoding == "grounded"  # no response_format: the server's --decoding


def test_the_harness_http_backend_reads_its_own_server(served, tmp_path):
    tuned, url = served
    backend = OpenAIBackend(ServedModel("tuned", url), HTTPOptions(concurrency=4))
    assert backend.identity["served"]["sunrise"]["model"] == "fake:tuned"  # the server's own identity
    # It stops loops itself, by the model's tokens, so its answers are read whole, not streamed and cut.
    assert not backend.streams and "loop" not in backend.identity
    results = Generator(backend, GenerationSettings(), cache=False).run([c.note for c in SEED])
    assert [r.generation.text for r in results] == [dumps(c.expected) for c in SEED]
    assert {s.decoding for s in tuned.settings} == {"free"}  # response_format text: free, as asked


def test_requests_that_arrive_together_share_one_batch(served):
    tuned, url = served
    notes = [c.note for c in SEED[:8]]
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: client.chat.completions.create(model="tuned", messages=messages(n)),
                                notes))
    assert [a.choices[0].message.content for a in answers] == [dumps(c.expected) for c in SEED[:8]]
    # Sent together, they arrive within the batcher's window: far fewer forward passes than requests.
    assert len(tuned.calls) < len(notes) / 2 and max(len(c) for c in tuned.calls) > 1
    assert sorted(n for call in tuned.calls for n in call) == sorted(notes)


def test_the_decoding_follows_the_request(served):
    tuned, url = served
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    client.chat.completions.create(model="tuned", messages=messages(SEED[1].note), max_tokens=7,
                                   response_format={"type": "json_schema",
                                                    "json_schema": {"name": "s", "schema": SCHEMA}})
    assert tuned.settings[-1].decoding == "schema" and tuned.settings[-1].max_new_tokens == 7


@pytest.mark.parametrize("body, status, code", [
    ({"model": "gpt-4", "messages": messages("Pt A, 40y.")}, 404, "model_not_found"),
    ({"model": "tuned", "messages": messages("Pt A, 40y."), "stream": "yes"}, 400, "invalid_value"),
    ({"model": "tuned", "messages": messages("x" * 20_001), "stream": True}, 422, "too_long"),
    ({"model": "tuned", "messages": [{"role": "system", "content": "You are a pirate."},
                                     {"role": "user", "content": "Pt A"}]}, 400, "unknown_prompt"),
    ({"model": "tuned", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "invalid_messages"),
    ({"model": "tuned", "messages": messages("   ")}, 422, "empty_note"),
    ({"model": "tuned", "messages": messages("x" * 20_001)}, 422, "too_long"),
    ({"model": "tuned", "messages": messages("Pt A"), "max_tokens": 0}, 400, "invalid_value"),
    ({"model": "tuned", "messages": messages("Pt A"), "response_format": {"type": "json_object"}}, 400,
     "unsupported_response_format"),
    ({"model": "tuned", "messages": messages("Pt A"), "structured_outputs": {"grammar": "start: /x/"}}, 400,
     "unsupported_grammar"),
])
def test_bad_requests_get_an_openai_shaped_error(served, body, status, code):
    _, url = served
    resp = httpx.post(f"{url}/chat/completions", json=body)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code and resp.json()["error"]["message"]


def test_a_streamed_answer_is_the_answer_in_pieces_with_its_finish_and_usage(served):
    """The official SDK's stream=True: the pieces spell the answer a plain request gets, the last chunk
    says why it ended, and the usage chunk comes where stream_options asks for it."""
    tuned, url = served
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    whole = client.chat.completions.create(model="tuned", messages=messages(SEED[0].note), temperature=0)
    chunks = list(client.chat.completions.create(model="tuned", messages=messages(SEED[0].note), temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content == dumps(SEED[0].expected)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    plain = list(client.chat.completions.create(model="tuned", messages=messages(SEED[1].note), stream=True))
    assert all(c.usage is None for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == dumps(SEED[1].expected)


def test_a_client_that_closes_its_stream_stops_its_answer():
    """The SDK reads one chunk and closes the stream: the server stops decoding that answer where it stands
    (the backend is told to, and gives no further pieces), and serves the next request as before."""
    backend = Paced({SEED[0].note: dumps(SEED[0].expected)}, pieces=40, seconds=0.05)
    app = create_app({"tuned": backend}, Transcriber(api_key=None), GenerationSettings())
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="tuned", messages=messages(SEED[0].note), stream=True)
        assert next(iter(stream)).choices[0].delta.content
        stream.close()
        assert backend.finished.wait(10)
        told = [stop for _, stop in backend.told]
        assert told[-1] and len(told) < 40 and not backend.generations[SEED[0].note].stopped
        backend.finished.clear()
        answer = client.chat.completions.create(model="tuned", messages=messages(SEED[0].note))
        assert answer.choices[0].message.content == dumps(SEED[0].expected)


def test_a_client_that_stops_waiting_for_a_whole_answer_stops_it():
    """A plain (unstreamed) request whose client times out: the server notices the closed connection,
    stops decoding that answer where it stands, and serves the client's next request as before."""
    backend = Paced({SEED[0].note: dumps(SEED[0].expected)}, pieces=40, seconds=0.05)
    app = create_app({"tuned": backend}, Transcriber(api_key=None), GenerationSettings())
    with running(app) as url:
        impatient = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=0.3)
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model="tuned", messages=messages(SEED[0].note))
        assert backend.finished.wait(10)
        told = [stop for _, stop in backend.told]
        assert told[-1] and len(told) < 40 and not backend.generations[SEED[0].note].stopped
        backend.finished.clear()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="tuned", messages=messages(SEED[0].note))
        assert answer.choices[0].message.content == dumps(SEED[0].expected)


def test_a_user_message_alone_is_answered_with_the_trained_prompt(served):
    _, url = served
    body = {"model": "tuned", "messages": [{"role": "user", "content": SEED[3].note}]}
    with_system = {"model": "tuned", "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                                  {"role": "user", "content": SEED[3].note}]}
    answers = [httpx.post(f"{url}/chat/completions", json=b).json() for b in (body, with_system)]
    assert answers[0]["choices"][0]["message"] == answers[1]["choices"][0]["message"]


def test_a_prompt_of_token_ids_is_answered_when_it_is_one_the_model_reads(served, tokenizer):
    """/v1/completions takes a note's prompt as token ids (how the harness sends prompts an adapter
    reads cut at its spaces); ids that are no such prompt, or text, get a clear error."""
    from harness.prompt import prompt_ids, read_prompt_ids

    tuned, url = served
    tuned.read_prompt = lambda ids: read_prompt_ids(tokenizer, ids, split_note_spaces=True)
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    note = SEED[2].note
    answer = client.completions.create(model="tuned", prompt=prompt_ids(tokenizer, note, split_note_spaces=True),
                                       max_tokens=9, extra_body={"response_format": {"type": "text"}})
    assert answer.choices[0].text == dumps(SEED[2].expected) and answer.choices[0].finish_reason == "stop"
    assert tuned.calls[-1] == [note] and tuned.settings[-1].decoding == "free"
    assert tuned.settings[-1].max_new_tokens == 9
    for prompt, code in ((prompt_ids(tokenizer, note), "unknown_prompt"),  # the note not cut, as trained
                         ([[1, 2], [3]], "invalid_prompt"), (note, "invalid_prompt"), ([-1], "invalid_prompt")):
        resp = httpx.post(f"{url}/completions", json={"model": "tuned", "prompt": prompt})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == code, prompt
    base_ids = httpx.post(f"{url}/completions", json={"model": "base", "prompt": [1, 2, 3]})  # no read_prompt
    assert base_ids.status_code == 400 and base_ids.json()["error"]["code"] == "unknown_prompt"


@pytest.mark.slow
def test_a_served_adapter_answers_as_it_does_in_process(tmp_path):
    """`sunrise serve` in a subprocess, the real embedded model and the reference adapter, which reads
    notes cut at their spaces: over HTTP, with requests in flight together (so the
    server batches them its own way), every seed note gets exactly the output the same model gives in
    process, both as chat messages (the server cuts the note) and as the token ids the harness makes
    from the adapter's folder (as it sends them to vLLM): greedy, the same prompt, the same per-note
    bound, and outputs that do not depend on the batch (harness.numerics). Streamed, two notes at once,
    an answer comes in pieces as it is decoded and they spell the same output."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from harness.models import HFBackend, ModelSpec
    from tests.fakes.servers import server_process

    adapter = REFERENCE_ADAPTER
    serve = [sys.executable, "-m", "harness.cli", "serve", "--port", "{port}", "--decoding", "free",
             "--adapter", str(adapter)]
    notes = [c.note for c in SEED]
    with server_process(serve, tmp_path / "serve.log") as url:
        remote = {way: OpenAIBackend(ServedModel("tuned", url, folder), HTTPOptions(concurrency=len(notes)))
                  for way, folder in (("chat", None), ("token ids", str(adapter)))}
        over_http = {way: backend.generate(notes, GenerationSettings()) for way, backend in remote.items()}
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        with ThreadPoolExecutor(2) as pool:
            streamed = list(pool.map(lambda note: [c.choices[0] for c in client.chat.completions.create(
                model="tuned", messages=messages(note), stream=True) if c.choices], notes[:2]))
    local = HFBackend(ModelSpec(quantization="nf4", adapter=str(adapter)))
    assert local.identity["note_tokens"] == remote["token ids"].identity["note_tokens"] == "split at spaces"
    assert remote["chat"].identity["served"]["sunrise"]["adapter_sha256"] == local.identity["adapter_sha256"]
    in_process = local.generate(notes, GenerationSettings())
    for way, got in over_http.items():
        assert [g.error for g in got] == [None] * len(notes), way
        assert [g.text for g in got] == [g.text for g in in_process], way
        assert [g.new_tokens for g in got] == [g.new_tokens for g in in_process], way
    for choices, gen in zip(streamed, in_process, strict=False):
        pieces = [c.delta.content for c in choices if c.delta.content]
        assert len(pieces) > 5 and "".join(pieces) == gen.text
        assert choices[-1].finish_reason == ("stop" if gen.stopped else "length")
