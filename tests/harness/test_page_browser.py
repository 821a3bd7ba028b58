"""The manual testing page in headless Chromium with a fake microphone (a wav spoken by espeak-ng)."""

import shutil
import subprocess
import threading

import pytest

from harness.models import FakeBackend, GenerationSettings, HFBackend, ModelSpec
from harness.schema import dumps
from harness.server import create_app
from harness.settings import REFERENCE_ADAPTER
from harness.transcribe import Transcriber
from scenarios import SEED
from tests.browser import browser, screenshot
from tests.fakes.groq import KEY
from tests.fakes.servers import running

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture
def spoken_note(tmp_path):
    """A 16-bit PCM wav of a dictated note, for Chromium's fake microphone."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; scripts/setup.sh does it)")
    wav = tmp_path / "note.wav"
    subprocess.run([espeak, "-w", str(wav), "Patient Oleg Novak, sixty one years old, reports pneumonia."],
                   check=True)
    assert wav.read_bytes()[:4] == b"RIFF"
    return wav


def _mic(wav):
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav.resolve()}"]


def _dictate(page):
    page.click("#dictate")
    page.wait_for_selector("#dictate.recording")
    page.wait_for_timeout(1500)
    page.click("#dictate")


def test_dictate_then_extract_with_the_real_model(spoken_note, fake_groq):
    """Grounded decoding: whatever the model writes, every value is in the note and marked there."""
    tuned = HFBackend(ModelSpec(quantization="nf4", adapter=str(REFERENCE_ADAPTER)))
    app = create_app({"tuned": tuned}, Transcriber(api_key=KEY, base_url=fake_groq.url),
                     GenerationSettings(decoding="grounded"))
    with running(app) as url, browser(_mic(spoken_note)) as b:
        page = b.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url)
        page.wait_for_selector("#dictate:not([disabled])")
        _dictate(page)
        page.wait_for_function("document.getElementById('note').value.length > 0", timeout=30_000)
        assert page.input_value("#note") == fake_groq.text
        upload = fake_groq.uploads[-1]
        assert upload.filename == "dictation.webm" and upload.content_type.startswith("audio/webm")
        assert len(upload.data) > 1000 and upload.data[:4] == b"\x1aE\xdf\xa3"  # a real webm recording
        page.click("#extract")
        page.wait_for_selector("#valid-tuned", timeout=120_000)
        assert page.inner_text("#valid-tuned") == "schema v1 valid · every value in the note"
        assert '"resourceType": "SunriseEMRClinicalSummary"' in page.inner_text("#json-tuned")
        assert page.inner_text("#note-tuned") == fake_groq.text and page.locator("#note-tuned mark").count() >= 2
        assert page.locator("#ungrounded-tuned").count() == 0
        assert "transcription" in page.inner_text("#timings") and "tuned model" in page.inner_text("#timings")
        screenshot(page, "manual-page-after-extraction.png")


def test_faults_show_a_message_and_keep_the_note(spoken_note, fake_groq):
    fake_groq.mode = "rate_limit"
    tuned = FakeBackend({c.note: dumps(c.expected) for c in SEED}, name="tuned")
    base = FakeBackend(lambda n: "Here you go: {}", name="base")
    app = create_app({"tuned": tuned, "base": base}, Transcriber(api_key=KEY, base_url=fake_groq.url))
    with running(app) as url, browser(_mic(spoken_note)) as b:
        page = b.new_page()
        page.goto(url)
        page.fill("#note", "typed before dictating")
        page.wait_for_selector("#dictate:not([disabled])")
        _dictate(page)
        page.wait_for_selector("#message.error")
        assert "try again in 7 s" in page.inner_text("#message")
        assert page.input_value("#note") == "typed before dictating"
        page.fill("#note", "")
        page.click("#extract")
        page.wait_for_selector("#message.error")
        assert "empty" in page.inner_text("#message")
        page.fill("#note", SEED[0].note)
        page.click("#extract")
        page.wait_for_selector("#valid-base")  # base and tuned side by side
        assert page.inner_text("#valid-tuned") == "schema v1 valid · every value in the note"
        assert page.inner_text("#valid-base") == "not schema-valid"


def test_an_invented_drug_turns_the_badge_red_and_is_named(fake_groq):
    """The study's first failure: a drug the note does not name, under an otherwise valid summary."""
    note = fake_groq.text  # "... Rx: Amoxicillin 500mg."
    invented = {"resourceType": "SunriseEMRClinicalSummary",
                "patient": {"name": "Oleg Novak", "ageInt": 61, "gender": None},
                "reasonCode": [{"text": "pneumonia"}],
                "medicationStatement": [{"medication": "Amlin", "dose": {"value": 500, "unit": "mg"}}]}
    app = create_app({"tuned": FakeBackend({note: dumps(invented)}, name="tuned")}, Transcriber(api_key=None))
    with running(app) as url, browser() as b:
        page = b.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url)
        page.fill("#note", note)
        page.click("#extract")
        page.wait_for_selector("#valid-tuned")
        badge = page.locator("#valid-tuned")
        assert badge.inner_text() == "schema v1 valid · 1 value not in the note"
        assert "bad" in badge.get_attribute("class")
        assert 'medicationStatement[0].medication = "Amlin"' in page.inner_text("#ungrounded-tuned")
        marks = page.locator("#note-tuned mark")
        assert [marks.nth(i).inner_text() for i in range(marks.count())] == ["Oleg Novak", "61", "pneumonia", "500"]
        assert marks.nth(0).get_attribute("title") == "patient.name"
        screenshot(page, "manual-page-ungrounded-value.png")


class _Gated(FakeBackend):
    """Writes the start of its answer, then waits to be let go before it finishes."""

    def __init__(self, outputs, name):
        super().__init__(outputs, name)
        self.go = threading.Event()

    def generate(self, notes, settings, listener=None):
        for i, note in enumerate(notes):
            if listener is not None:
                listener(i, self.outputs[note][:44])
        assert self.go.wait(60), "the test never let the model finish"
        return super().generate(notes, settings, listener)


def test_the_answer_shows_while_it_is_written_then_is_checked():
    """The page streams: the start of an answer shows before the model has finished (no verdict yet),
    and the checked result replaces it when it has."""
    answer = dumps(SEED[0].expected)
    tuned = _Gated({SEED[0].note: answer}, "tuned")
    app = create_app({"tuned": tuned}, Transcriber(api_key=None))
    with running(app) as url, browser() as b:
        page = b.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url)
        page.fill("#note", SEED[0].note)
        page.click("#extract")
        page.wait_for_function(f"(document.getElementById('json-tuned') || {{}}).textContent === {answer[:44]!r}")
        assert "writing" in page.inner_text("#result-tuned h3") and page.locator("#valid-tuned").count() == 0
        screenshot(page, "manual-page-while-writing.png")
        tuned.go.set()
        page.wait_for_selector("#valid-tuned")
        assert page.inner_text("#valid-tuned") == "schema v1 valid · every value in the note"
        assert page.locator(".result").count() == 1 and "writing" not in page.inner_text("#result-tuned h3")


def test_without_a_key_dictation_is_disabled_with_a_reason(monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    app = create_app({"tuned": FakeBackend(name="tuned")}, Transcriber(api_key=None))
    with running(app) as url, browser() as b:
        page = b.new_page()
        page.goto(url)
        page.wait_for_function("document.getElementById('dictation-reason').textContent.length > 0")
        assert page.is_disabled("#dictate") and "GROQ_API_KEY" in page.inner_text("#dictation-reason")
