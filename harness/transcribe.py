"""Speech to text through Groq's Whisper, with the official `groq` SDK.

Every failure becomes a TranscriptionError with a distinct code and a message a clinician can act
on. The API key is never part of a message: it comes from GROQ_API_KEY and stays inside the client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_BYTES = 25 * 1024 * 1024  # Groq's upload limit for speech to text
# Groq accepts these containers; the filename's extension is how it tells them apart.
AUDIO_TYPES = {
    "audio/webm": "webm", "audio/ogg": "ogg", "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav",
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/mp4": "m4a", "audio/x-m4a": "m4a", "audio/flac": "flac",
    "audio/opus": "opus", "video/webm": "webm",
}
DEFAULT_MODEL = "whisper-large-v3-turbo"


@dataclass
class TranscriptionError(Exception):
    code: str  # no_key, too_large, not_audio, unreachable, timeout, rate_limited, bad_key, rejected, failed
    status: int  # the HTTP status our server answers with
    message: str

    def __str__(self) -> str:
        return self.message


def audio_extension(mime: str | None) -> str | None:
    """'audio/webm;codecs=opus' -> 'webm'; None for anything that is not audio Groq takes."""
    base = (mime or "").split(";")[0].strip().lower()
    return AUDIO_TYPES.get(base)


class Transcriber:
    def __init__(self, api_key: str | None = None, base_url: str | None = None, model: str = DEFAULT_MODEL,
                 timeout: float = 30.0):
        self._key = api_key if api_key is not None else os.environ.get("GROQ_API_KEY") or None
        self.base_url = base_url or os.environ.get("GROQ_BASE_URL") or None
        self.model, self.timeout = model, timeout

    @property
    def enabled(self) -> bool:
        return bool(self._key)

    @property
    def reason(self) -> str:
        return "" if self.enabled else "Dictation is off: no GROQ_API_KEY is set on the server. Typing still works."

    def check_upload(self, data: bytes, mime: str | None) -> str:
        """Refuse what Groq would refuse, before it leaves the machine; returns the file extension."""
        if len(data) > MAX_BYTES:
            raise TranscriptionError("too_large", 413, f"The recording is {len(data) / 2**20:.1f} MB; the limit "
                                                        "is 25 MB. Record a shorter note.")
        ext = audio_extension(mime)
        if ext is None:
            raise TranscriptionError("not_audio", 415,
                                     f"The upload is not audio Whisper accepts ({mime or 'no type'}).")
        if not data:
            raise TranscriptionError("not_audio", 415, "The recording is empty. Try dictating again.")
        return ext

    def transcribe(self, data: bytes, mime: str | None) -> str:
        if not self.enabled:
            raise TranscriptionError("no_key", 503, self.reason)
        ext = self.check_upload(data, mime)
        import groq

        client = groq.Groq(api_key=self._key, base_url=self.base_url, timeout=self.timeout, max_retries=0)
        try:
            result = client.audio.transcriptions.create(
                model=self.model, file=(f"dictation.{ext}", data, (mime or "").split(";")[0]),
                response_format="json")
        except groq.APITimeoutError:
            raise TranscriptionError("timeout", 504, "The transcription service did not answer in time. "
                                                     "Try again, or type the note.") from None
        except groq.APIConnectionError:
            raise TranscriptionError("unreachable", 502, "The transcription service cannot be reached. Check the "
                                                         "network, or type the note.") from None
        except groq.RateLimitError as exc:
            wait = exc.response.headers.get("retry-after")
            raise TranscriptionError("rate_limited", 429, "Too many dictations for the transcription service "
                                     f"right now (429); try again{f' in {wait} s' if wait else ' shortly'}.") from None
        except groq.AuthenticationError:
            raise TranscriptionError("bad_key", 502, "The transcription service rejected the server's API key "
                                                     "(401). Ask the administrator to check GROQ_API_KEY.") from None
        except groq.BadRequestError as exc:
            raise TranscriptionError("rejected", 422, "The transcription service rejected the recording (400): "
                                     f"{self._scrub(_error_message(exc))}") from None
        except groq.APIStatusError as exc:
            raise TranscriptionError("failed", 502, f"The transcription service failed ({exc.status_code}). "
                                                    "Try again, or type the note.") from None
        return (getattr(result, "text", "") or "").strip()

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text


def _error_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return "no details given"
