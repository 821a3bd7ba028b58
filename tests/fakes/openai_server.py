"""A local fake of an OpenAI-compatible chat-completions server (the wire format vLLM, llama.cpp and
Groq speak), with scripted faults, for testing the HTTP backend with no GPU and no internet. Its
/v1/completions answers a prompt of token ids (vLLM's way) from `answers_by_ids`. A request with
`stream` gets its answer as server-sent events, `chunk_chars` characters a chunk (vLLM and llama.cpp
send about a token a chunk), and `streamed` records how many chunks each stream sent before it ended
or the client closed it.

Errors are shaped {"error": {"message", "type", "code"}}. A note's `faults` are played one per
attempt (so a retry meets the next one), then the note is answered from `answers`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from harness.server import ClosingStream

KEY = "sk-test-0123456789-secret"
MODELS = ("served-base", "cand")


@dataclass
class FakeOpenAI:
    answers: dict[str, str] = field(default_factory=dict)  # note -> the assistant's content
    answers_by_ids: dict[tuple[int, ...], str] = field(default_factory=dict)  # prompt token ids -> completion
    faults: dict[str, list[str]] = field(default_factory=dict)  # note -> faults: 429, 500, slow, malformed
    retry_after: str = "1"
    delay: float = 3.0
    requests: list[dict] = field(default_factory=list)  # every request body, as received
    chunk_chars: int = 4
    chunk_delay: float = 0.0  # seconds between chunks
    streamed: list[int] = field(default_factory=list)  # chunks each stream sent, in the order streams ended
    in_flight: int = 0
    most_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def authenticate(request: Request, call_next):
            sent = request.headers.get("authorization", "").removeprefix("Bearer ")
            if sent != KEY:  # like OpenAI's, the message quotes the key it was sent
                return _error(401, f"Incorrect API key provided: {sent}", "invalid_request_error", "invalid_api_key")
            return await call_next(request)

        @app.get("/v1/models")
        def models():
            return {"object": "list", "data": [
                {"id": m, "object": "model", "created": int(time.time()), "owned_by": "fake", "root": m,
                 "permission": [{"id": f"modelperm-{time.time_ns()}"}]} for m in MODELS]}

        @app.post("/v1/chat/completions")
        def chat(body: dict):
            self.requests.append(body)
            if body.get("model") not in MODELS:
                return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", None)
            note = body["messages"][-1]["content"]
            fault = self.faults[note].pop(0) if self.faults.get(note) else None
            with self._lock:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                time.sleep(self.delay if fault == "slow" else 0.05)  # long enough for requests to overlap
            finally:
                with self._lock:
                    self.in_flight -= 1
            if fault == "429":
                return _error(429, "Rate limit reached", "requests", "rate_limit_exceeded",
                              {"retry-after": self.retry_after})
            if fault == "500":
                return _error(500, "internal error", "internal_server_error", None)
            if fault == "malformed":
                if body.get("stream"):
                    return StreamingResponse(iter(['data: {"id": "chatcmpl-1", "choices": [\n\n']),
                                             media_type="text/event-stream")
                return Response('{"id": "chatcmpl-1", "choices": [', media_type="application/json")
            content = self.answers.get(note, "{}")
            if body.get("stream"):
                return self._stream(body, content, chat=True)
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(json.dumps(content)) // 4,
                              "total_tokens": 10 + len(json.dumps(content)) // 4}}

        @app.post("/v1/completions")
        def completions(body: dict):
            self.requests.append(body)
            if body.get("model") not in MODELS:
                return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", None)
            text = self.answers_by_ids.get(tuple(body["prompt"]), "{}")
            if body.get("stream"):
                return self._stream(body, text, chat=False)
            return {"id": "cmpl-1", "object": "text_completion", "created": int(time.time()), "model": body["model"],
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(text) // 4,
                              "total_tokens": len(body["prompt"]) + len(text) // 4}}

        return app

    def _stream(self, body: dict, text: str, chat: bool) -> ClosingStream:
        """`text` as OpenAI's chunks: content pieces, an empty one with the finish reason, the usage where
        `stream_options` asks for it, then [DONE]."""
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str, finish: str | None, usage: dict | None = None) -> str:
            choice = {"index": 0, "finish_reason": finish,
                      **({"delta": {"content": piece}} if chat else {"text": piece, "logprobs": None})}
            event = {"id": "chatcmpl-1", "object": kind, "created": int(time.time()), "model": body["model"],
                     "choices": [] if usage else [choice], **({"usage": usage} if usage else {})}
            return f"data: {json.dumps(event)}\n\n"

        async def events():  # async, so that a client closing the stream stops it
            sent = 0
            try:
                for start in range(0, len(text), self.chunk_chars):
                    yield chunk(text[start:start + self.chunk_chars], None)
                    sent += 1
                    await asyncio.sleep(self.chunk_delay)
                yield chunk("", "stop")
                if (body.get("stream_options") or {}).get("include_usage"):
                    tokens = sent  # a chunk a token, as the servers it stands in for send them
                    yield chunk("", None, {"prompt_tokens": 10, "completion_tokens": tokens,
                                           "total_tokens": 10 + tokens})
                yield "data: [DONE]\n\n"
            finally:
                self.streamed.append(sent)

        return ClosingStream(events(), media_type="text/event-stream")  # closed as the client goes, it records then


def _error(status, message, kind, code, headers=None):
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status,
                        headers=headers)
