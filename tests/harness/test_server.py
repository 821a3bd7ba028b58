"""The manual testing server over real HTTP, with the real groq SDK talking to a local fake Groq."""

import concurrent.futures
import json
import time

import groq
import httpx
import pytest

from harness.errors import InputError
from harness.models import FakeBackend
from harness.schema import dumps
from harness.server import create_app
from harness.transcribe import Transcriber
from scenarios import SEED
from tests.fakes.groq import KEY
from tests.fakes.paced import Paced
from tests.fakes.servers import refusing_port, running

WEBM = b"\x1aE\xdf\xa3" + b"\x00" * 2000  # an EBML header, as MediaRecorder's webm starts


def _server(fake_groq=None, key=KEY, timeout=5.0, base_url=None):
    tuned = FakeBackend({c.note: dumps(c.expected) for c in SEED}, name="tuned")
    base = FakeBackend(lambda note: "Sure! {\"symptoms\": []}", name="base")
    transcriber = Transcriber(api_key=key, base_url=base_url or (fake_groq.url if fake_groq else None),
                              timeout=timeout)
    return running(create_app({"tuned": tuned, "base": base}, transcriber))


def _upload(url, data=WEBM, mime="audio/webm;codecs=opus"):
    return httpx.post(f"{url}/api/transcribe", files={"audio": ("blob", data, mime)}, timeout=30)


def test_fake_groq_rejects_a_file_without_audio_extension(fake_groq):
    """The pitfall the real service has: the SDK must be given a filename with the right extension."""
    client = groq.Groq(api_key=KEY, base_url=fake_groq.url, max_retries=0)
    with pytest.raises(groq.BadRequestError, match="file must be one of"):
        client.audio.transcriptions.create(model="whisper-large-v3-turbo", file=("recording", WEBM, "audio/webm"))
    ok = client.audio.transcriptions.create(model="whisper-large-v3-turbo", file=("a.webm", WEBM, "audio/webm"))
    assert ok.text == fake_groq.text


def test_dictation_round_trip_through_the_real_sdk(fake_groq):
    with _server(fake_groq) as url:
        assert httpx.get(f"{url}/api/status").json()["dictation"]["enabled"] is True
        resp = _upload(url)
    assert resp.status_code == 200 and resp.json()["text"] == fake_groq.text
    upload = fake_groq.uploads[-1]
    assert upload.filename == "dictation.webm" and upload.data == WEBM and upload.model == "whisper-large-v3-turbo"


@pytest.mark.parametrize("mode, status, code, words", [
    ("rate_limit", 429, "rate_limited", "try again in 7 s"),
    ("bad_key", 502, "bad_key", "rejected the server's API key"),
    ("server_error", 502, "failed", "failed (500)"),
])
def test_groq_faults_become_distinct_readable_messages(fake_groq, mode, status, code, words):
    fake_groq.mode = mode
    with _server(fake_groq) as url:
        resp = _upload(url)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["code"] == code and words in error["message"] and KEY not in resp.text


def test_groq_timeout_and_unreachable(fake_groq):
    fake_groq.mode, fake_groq.delay = "slow", 2.0
    with _server(fake_groq, timeout=0.5) as url:
        resp = _upload(url)
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
    with refusing_port() as port, _server(base_url=f"http://127.0.0.1:{port}") as url:
        resp = _upload(url)
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "unreachable"


def test_rejected_file_message_is_passed_on(fake_groq):
    fake_groq.text = ""
    with _server(fake_groq) as url:
        resp = _upload(url, mime="audio/wav")
    assert resp.status_code == 200 and fake_groq.uploads[-1].filename == "dictation.wav"


def test_too_large_or_not_audio_is_refused_before_groq(fake_groq):
    with _server(fake_groq) as url:
        big = _upload(url, data=b"\0" * (25 * 1024 * 1024 + 10))
        text = _upload(url, data=b"hello", mime="text/plain")
        empty = _upload(url, data=b"")
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    assert text.status_code == 415 and empty.status_code == 415
    assert fake_groq.uploads == []


def test_no_key_disables_dictation_but_typing_works(fake_groq, monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    with _server(fake_groq, key=None) as url:
        status = httpx.get(f"{url}/api/status").json()["dictation"]
        refused = _upload(url)
        typed = httpx.post(f"{url}/api/extract", json={"note": SEED[0].note})
    assert status["enabled"] is False and "GROQ_API_KEY" in status["reason"]
    assert refused.status_code == 503 and typed.status_code == 200


def test_extract_shows_json_validity_checks_and_both_models():
    with _server() as url:
        body = httpx.post(f"{url}/api/extract", json={"note": SEED[2].note}).json()["results"]
    tuned, base = body["tuned"], body["base"]
    assert tuned["schema_valid"] and tuned["json"] == SEED[2].expected and tuned["strict_json"]
    rules = {c["rule"]: c for c in tuned["checks"]}
    assert rules["medication entries"]["detail"] == "2 entries" and rules["age"]["detail"] == "48"
    assert not base["schema_valid"] and not base["strict_json"]


class _Failing(FakeBackend):
    def __init__(self, error: Exception, name: str):
        super().__init__(name=name)
        self.error = error

    def generate(self, notes, settings, listener=None):
        raise self.error


def _lines(url, note):
    with httpx.stream("POST", f"{url}/api/extract", json={"note": note, "stream": True}, timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in resp.iter_lines() if line]


def test_a_streamed_extraction_shows_each_answer_as_it_grows_then_the_same_result():
    """The page's stream: each model's answer as it grows, then its result, model after model; the
    results are those a plain request gets."""
    text = dumps(SEED[2].expected)
    tuned = FakeBackend({SEED[2].note: text}, name="tuned", pieces=4)
    base = FakeBackend(lambda note: "Sure! {}", name="base", pieces=2)
    with running(create_app({"tuned": tuned, "base": base}, Transcriber(api_key=None))) as url:
        whole = httpx.post(f"{url}/api/extract", json={"note": SEED[2].note}).json()["results"]
        lines = _lines(url, SEED[2].note)
    assert [(m["role"], "result" if "result" in m else m["partial"]) for m in lines] == [
        *[("tuned", text[:len(text) * k // 4]) for k in range(1, 5)], ("tuned", "result"),
        ("base", "Sure"), ("base", "Sure! {}"), ("base", "result")]
    streamed = {m["role"]: {k: v for k, v in m["result"].items() if k != "seconds"} for m in lines if "result" in m}
    assert streamed == {role: {k: v for k, v in r.items() if k != "seconds"} for role, r in whole.items()}


def test_a_page_that_closes_its_stream_stops_the_answer_and_asks_no_further_model():
    """The page left mid-answer (a closed tab): the tuned model's answer stops where it stands, and the base
    model is never asked."""
    tuned = Paced({SEED[2].note: dumps(SEED[2].expected)}, pieces=40, seconds=0.05)
    base = Paced({SEED[2].note: "Sure! {}"})
    with running(create_app({"tuned": tuned, "base": base}, Transcriber(api_key=None))) as url:
        with httpx.stream("POST", f"{url}/api/extract", json={"note": SEED[2].note, "stream": True}) as resp:
            assert "partial" in json.loads(next(resp.iter_lines()))
        assert tuned.finished.wait(10)
        told = [stop for _, stop in tuned.told]
        assert told[-1] and len(told) < 40 and not tuned.generations[SEED[2].note].stopped
        time.sleep(0.3)
        assert base.calls == []


def test_a_page_that_stops_waiting_for_its_answers_stops_them_and_asks_no_further_model():
    """A plain request left mid-answer (the client's timeout): the tuned model's answer stops where it stands,
    and the base model is never asked."""
    tuned = Paced({SEED[2].note: dumps(SEED[2].expected)}, pieces=40, seconds=0.05)
    base = Paced({SEED[2].note: "Sure! {}"})
    with running(create_app({"tuned": tuned, "base": base}, Transcriber(api_key=None))) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/api/extract", json={"note": SEED[2].note}, timeout=0.3)
        assert tuned.finished.wait(10)
        told = [stop for _, stop in tuned.told]
        assert told[-1] and len(told) < 40 and not tuned.generations[SEED[2].note].stopped
        time.sleep(0.3)
        assert base.calls == []


def test_a_streamed_extraction_refuses_a_note_before_it_starts_and_says_what_failed_after():
    refusing = _Failing(InputError("the note is too long: 9000 prompt tokens"), "tuned")
    tuned = FakeBackend({SEED[0].note: dumps(SEED[0].expected)}, name="tuned")
    with running(create_app({"tuned": refusing}, Transcriber(api_key=None))) as url:
        resp = httpx.post(f"{url}/api/extract", json={"note": SEED[0].note, "stream": True})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "too_long"
    broken = _Failing(RuntimeError("out of memory"), "base")
    with running(create_app({"tuned": tuned, "base": broken}, Transcriber(api_key=None))) as url:
        lines = _lines(url, SEED[0].note)
    assert lines[-2]["role"] == "tuned" and "result" in lines[-2]
    assert lines[-1] == {"error": {"code": "generation_failed", "message": "The base model failed: out of memory"}}


@pytest.mark.parametrize("payload, status, code", [
    ({"note": "   "}, 422, "empty_note"),
    ({"note": "x" * 20_001}, 422, "too_long"),
    ({"text": "wrong key"}, 400, "bad_request"),
])
def test_bad_notes_get_a_message_not_a_500(payload, status, code):
    with _server() as url:
        resp = httpx.post(f"{url}/api/extract", json=payload)
    assert resp.status_code == status and resp.json()["error"]["code"] == code


def test_two_users_at_once_are_both_served(fake_groq):
    with _server(fake_groq) as url, concurrent.futures.ThreadPoolExecutor(4) as pool:
        extracts = [pool.submit(httpx.post, f"{url}/api/extract", json={"note": c.note}, timeout=30)
                    for c in SEED[:2]]
        dictations = [pool.submit(_upload, url) for _ in range(2)]
        responses = [f.result() for f in extracts + dictations]
    assert [r.status_code for r in responses] == [200] * 4


def test_key_never_reaches_the_page(fake_groq):
    with _server(fake_groq) as url:
        page = httpx.get(f"{url}/").text
        status = httpx.get(f"{url}/api/status").text
    assert KEY not in page and KEY not in status and 'id="dictate"' in page
    assert json.loads(status)["models"]["tuned"]["model"] == "fake:tuned"
