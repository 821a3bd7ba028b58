"""The manual testing page: type or dictate a note, see the JSON summary (and the base model's, side
by side); and the same models in the OpenAI protocol (harness.openai_api).

Models are loaded once at start-up. Each sits behind a Batcher: requests that arrive together, from
the page or from API clients, share one forward pass instead of queueing behind a lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from harness.batcher import Batcher, growing, whole
from harness.checks import describe_output
from harness.errors import InputError
from harness.models import Backend, Generation, GenerationSettings, ModelSpec
from harness.transcribe import MAX_BYTES, Transcriber, TranscriptionError

PAGE = Path(__file__).with_name("templates") / "page.html"
MAX_NOTE_CHARS = 20_000  # far beyond any clinical note; longer input is refused before tokenising


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def note_problem(note: str) -> tuple[str, str] | None:
    """(code, message) when a note cannot be extracted from as sent, else None."""
    if not note.strip():
        return "empty_note", "The note is empty: type or dictate a note first."
    if len(note) > MAX_NOTE_CHARS:
        return "too_long", f"The note is {len(note)} characters; the limit is {MAX_NOTE_CHARS}."
    return None


class ClosingStream(StreamingResponse):
    """A streamed response whose body is closed however the response ends. A client that goes away
    cancels the sending, which can leave the body's async generator at a yield, closed only when it is
    garbage-collected (seconds later, or never); closed here at once, its answers' `growing` tell the
    batcher that nobody reads them, and their decoding stops."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


class RefuseHugeUploads:
    """A recording over the transcription limit is refused from its Content-Length, before its body is
    read. Plain ASGI: Starlette's @app.middleware("http") wraps `receive`, and behind that wrapper
    Request.is_disconnected() never sees a client leave (measured: False for 2 s after the client had
    gone), so an answer nobody waits for would be decoded to its end."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/transcribe":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > MAX_BYTES + 65536:
                response = _error(413, "too_large", "The recording is over 25 MB; record a shorter note.")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def refused(exc: InputError) -> str:
    """What a client is told of a note the model refuses (too long for its context)."""
    return f"{exc}. Shorten the note."


def create_app(models: Mapping[str, Backend], transcriber: Transcriber,
               settings: GenerationSettings = GenerationSettings()) -> FastAPI:
    """`models` maps a role ('tuned', 'base') to a loaded backend; the first is the main answer."""
    from harness.openai_api import openai_routes

    app = FastAPI(title="Sunrise manual testing", docs_url=None, redoc_url=None)
    batchers = {role: Batcher(model) for role, model in models.items()}
    app.include_router(openai_routes(batchers, settings))

    app.add_middleware(RefuseHugeUploads)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/status")
    def status():
        return {
            "dictation": {"enabled": transcriber.enabled, "reason": transcriber.reason},
            "decoding": settings.decoding,
            "models": {role: dict(m.identity) for role, m in models.items()},
        }

    @app.post("/api/transcribe")
    def transcribe(audio: UploadFile):
        t0 = time.perf_counter()
        data = audio.file.read(MAX_BYTES + 1)
        try:
            text = transcriber.transcribe(data, audio.content_type)
        except TranscriptionError as exc:
            return _error(exc.status, exc.code, exc.message)
        return {"text": text, "seconds": round(time.perf_counter() - t0, 3)}

    @app.post("/api/extract")
    async def extract(request: Request):
        try:
            body = await request.json()
            note = body["note"]
            if not isinstance(note, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error(400, "bad_request", 'Send JSON {"note": "..."}.')
        problem = note_problem(note)
        if problem:
            return _error(422, *problem)
        if body.get("stream"):
            return await _streamed_extraction(note)
        results = {}
        for role, batcher in batchers.items():
            try:
                t0 = time.perf_counter()
                gen = await whole(batcher, note, settings, request.is_disconnected)
            except InputError as exc:
                return _refused(exc)
            if gen is None:  # the page went away: its answer stopped, and the next model is not asked
                return client_gone()
            results[role] = _result(gen, note, time.perf_counter() - t0)
        return {"results": results}

    async def _streamed_extraction(note: str):
        """One JSON object a line: {"role", "partial"} as each model's answer grows, {"role", "result"}
        when it is done (the models one after the other), or {"error"} where a model fails midway. A
        note the first model refuses is a 422, as without streaming."""
        order = list(batchers.items())
        t0 = time.perf_counter()
        answer = growing(order[0][1], note, settings)
        try:
            item = await anext(answer)
        except InputError as exc:
            return _refused(exc)

        async def lines():
            nonlocal answer, item, t0
            role = order[0][0]
            try:
                for k, (role, batcher) in enumerate(order):
                    if k:
                        t0, answer = time.perf_counter(), growing(batcher, note, settings)
                        item = await anext(answer)
                    while isinstance(item, str):
                        yield json.dumps({"role": role, "partial": item}) + "\n"
                        item = await anext(answer)
                    yield json.dumps({"role": role, "result": _result(item, note, time.perf_counter() - t0)}) + "\n"
                    await answer.aclose()
            except Exception as exc:  # noqa: BLE001 - the response has begun: its last line says what failed
                message = refused(exc) if isinstance(exc, InputError) else f"The {role} model failed: {exc}"
                yield json.dumps({"error": {"code": "generation_failed", "message": message}}) + "\n"
            finally:
                await answer.aclose()

        return ClosingStream(lines(), media_type="application/x-ndjson")

    return app


def client_gone() -> JSONResponse:
    """What is sent, to nobody, in place of an answer whose client left first (nginx's 499)."""
    return _error(499, "client_gone", "The client closed the request before its answer was ready.")


def _refused(exc: InputError) -> JSONResponse:
    return _error(422, "too_long", refused(exc))


def _result(gen: Generation, note: str, seconds: float) -> dict:
    return {"output": gen.text, "seconds": round(seconds, 3), "stopped": gen.stopped, "looped": gen.looped,
            "error": gen.error, **describe_output(gen.text, note)}


def serve(host: str, port: int, base: ModelSpec, tuned: ModelSpec | None, groq_base_url: str | None = None,
          whisper_model: str = "whisper-large-v3-turbo", compare_base: bool = False,
          settings: GenerationSettings = GenerationSettings()) -> None:
    import uvicorn

    from harness.models import load_backend

    models: dict[str, Backend] = {}
    if tuned is not None:
        models["tuned"] = load_backend(tuned)
    if tuned is None or compare_base:
        models["base"] = load_backend(base)
    transcriber = Transcriber(base_url=groq_base_url, model=whisper_model)
    print(f"Sunrise manual testing page on http://{host}:{port}/ and OpenAI-compatible API on "
          f"http://{host}:{port}/v1  (models: {', '.join(models)}; "
          f"decoding {settings.decoding}; dictation {'on' if transcriber.enabled else 'off: ' + transcriber.reason})",
          flush=True)
    # A stop (Ctrl-C, SIGTERM) waits at most 10 s for generations in flight, not for every queued one.
    uvicorn.run(create_app(models, transcriber, settings), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=10)
