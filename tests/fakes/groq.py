"""A local fake of Groq's speech-to-text HTTP API, for tests with no internet.

It speaks the real wire format (POST /openai/v1/audio/transcriptions, multipart, {"text": ...}
back, errors shaped {"error": {"message", "type", "code"}}), and like Groq it rejects a file part
whose name has no audio extension, so the missing-filename pitfall is caught.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

KEY = "gsk_test_secret_key_0123456789"
AUDIO_EXTENSIONS = ("flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "opus", "wav", "webm")


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes
    model: str


@dataclass
class FakeGroq:
    text: str = "Pt Oleg Novak, 61y, reports pneumonia. Rx: Amoxicillin 500mg."
    mode: str = "ok"  # ok, rate_limit, bad_key, slow, server_error
    delay: float = 3.0
    uploads: list[Upload] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/openai/v1/audio/transcriptions")
        async def transcriptions(request: Request):
            if request.headers.get("authorization") != f"Bearer {KEY}" or self.mode == "bad_key":
                return _error(401, "Invalid API Key", "invalid_request_error", "invalid_api_key")
            async with request.form() as form:
                upload, model = form.get("file"), str(form.get("model"))
                if upload is None or not hasattr(upload, "filename"):
                    return _error(400, "file is required", "invalid_request_error", None)
                data, name, mime = await upload.read(), upload.filename or "", upload.content_type or ""
            ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
            if ext not in AUDIO_EXTENSIONS:
                return _error(400, f"file must be one of the following types: {list(AUDIO_EXTENSIONS)}",
                              "invalid_request_error", None)
            self.uploads.append(Upload(name, mime, data, model))
            if self.mode == "rate_limit":
                return _error(429, "Rate limit reached for model", "requests", "rate_limit_exceeded",
                              headers={"retry-after": "7"})
            if self.mode == "server_error":
                return _error(500, "internal error", "internal_server_error", None)
            if self.mode == "slow":
                time.sleep(self.delay)
            return {"text": self.text, "x_groq": {"id": "req_fake"}}

        return app


def _error(status, message, kind, code, headers=None):
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status,
                        headers=headers)
