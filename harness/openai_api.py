"""`sunrise serve` in the OpenAI protocol: GET /v1/models, POST /v1/chat/completions and POST
/v1/completions for the models it loaded, so any OpenAI client (and the harness's own HTTP backend)
can use an adapter without importing Python. Always greedy. With `stream: true` the answer comes as
server-sent events while it is decoded, a piece each decoding step (batched with other requests as
ever); `stream_options: {"include_usage": true}` adds the usage chunk. A client that closes its
stream, or stops waiting for a whole answer (its timeout), stops its note's decoding where it stands
(harness.batcher), not the batch's other notes.

A chat request is one note: one user message, after no system message, the one the adapter was
trained with, or the engineered zero-shot prompt (harness.prompt). A completions request is one
prompt as token ids, exactly those `harness.prompt.prompt_ids` gives for a note the way the model
reads notes (cut at their spaces where its adapter was trained so), as the harness sends it to
servers that tokenize text their own way (vLLM). Decoding follows the request:
response_format {"type": "text"} is free, a json_schema response_format holding schema v1 is
`schema`, vLLM's structured_outputs holding the note's grounded grammar is `grounded`; a request
that names none gets the server's --decoding.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from harness.batcher import Batcher, growing, whole
from harness.errors import InputError
from harness.grammar import grammar_for
from harness.models import Generation, GenerationSettings
from harness.prompt import PROMPTS, SYSTEM_PROMPT
from harness.schema import SCHEMA
from harness.server import ClosingStream, client_gone, note_problem, refused


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": "invalid_request_error",
                                       "param": self.param, "code": self.code}}, status_code=self.status)


def openai_routes(batchers: Mapping[str, Batcher], settings: GenerationSettings) -> APIRouter:
    router = APIRouter(prefix="/v1")
    started = int(time.time())

    @router.get("/models")
    def models():
        return {"object": "list", "data": [
            {"id": role, "object": "model", "created": started, "owned_by": "sunrise",
             "root": batcher.backend.identity.get("model"), "sunrise": dict(batcher.backend.identity)}
            for role, batcher in batchers.items()]}

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        return await _complete(request, lambda body, backend: _note(body.get("messages")), "chat.completion")

    @router.post("/completions")
    async def completions(request: Request):
        return await _complete(request, lambda body, backend: _note_of_ids(body.get("prompt"), backend),
                               "text_completion")

    async def _complete(request: Request, read_note, kind: str):
        try:
            try:
                body = await request.json()
            except ValueError:
                raise RequestError(400, "invalid_json", "The body is not JSON.") from None
            role, note, asked = parse_request(body, batchers, settings, read_note)
            where = "messages" if kind == "chat.completion" else "prompt"
            problem = note_problem(note)
            if problem:
                raise RequestError(422, problem[0], problem[1], where)
            answer = _Answer(batchers[role], note, asked, where)
            if body.get("stream"):
                return await answer.stream(role, kind, bool((body.get("stream_options") or {}).get("include_usage")))
            gen = await answer.whole(request.is_disconnected)
        except RequestError as exc:
            return exc.response()
        if gen is None:  # the client stopped waiting (its timeout): its answer was stopped where it stood
            return client_gone()
        return {**_head(role, kind), "choices": [_choice(kind, gen.text, _finish(gen))], "usage": _usage(gen),
                "sunrise": _extras(gen, asked)}

    return router


class _Answer:
    """One request's generation, whole or streamed; a note the model refuses (too long) is the request's
    422 either way, since a stream starts only once its first piece, or its answer, is there."""

    def __init__(self, batcher: Batcher, note: str, settings: GenerationSettings, where: str):
        self.batcher, self.note, self.settings, self.where = batcher, note, settings, where

    async def whole(self, disconnected: Callable[[], Awaitable[bool]]) -> Generation | None:
        try:
            return await whole(self.batcher, self.note, self.settings, disconnected)
        except InputError as exc:
            raise self._refused(exc) from None

    def _refused(self, exc: InputError) -> RequestError:
        return RequestError(422, "too_long", refused(exc), self.where)

    async def stream(self, role: str, kind: str, usage: bool) -> ClosingStream:
        answer = growing(self.batcher, self.note, self.settings)
        try:
            first = await anext(answer)
        except InputError as exc:
            raise self._refused(exc) from None
        head = _head(role, f"{kind}.chunk" if kind == "chat.completion" else kind)

        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        def chunk(text: str, finish: str | None = None, **more) -> str:
            return event({**head, "choices": [_choice(kind, text, finish, delta=True)], **more})

        async def events():
            sent, item = "", first
            try:
                while isinstance(item, str):
                    if item.startswith(sent) and len(item) > len(sent):
                        yield chunk(item[len(sent):])
                        sent = item
                    item = await anext(answer)
            except Exception as exc:  # noqa: BLE001 - the stream has begun: its last event says what failed
                yield event({"error": {"message": f"the generation failed: {exc}", "type": "server_error",
                                       "code": "generation_failed"}})
                return
            finally:
                await answer.aclose()
            rest = item.text[len(sent):] if item.text.startswith(sent) else ""
            yield chunk(rest, _finish(item), sunrise=_extras(item, self.settings))
            if usage:
                yield event({**head, "choices": [], "usage": _usage(item)})
            yield "data: [DONE]\n\n"

        return ClosingStream(events(), media_type="text/event-stream")


def _head(role: str, kind: str) -> dict:
    return {"id": f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex}", "object": kind,
            "created": int(time.time()), "model": role}


def _choice(kind: str, text: str, finish: str | None, delta: bool = False) -> dict:
    """A response's one choice, or (`delta`) a stream chunk's."""
    if kind != "chat.completion":
        content = {"text": text, "logprobs": None}
    else:
        content = {"delta" if delta else "message": {"role": "assistant", "content": text}}
    return {"index": 0, **content, "finish_reason": finish}


def _finish(gen: Generation) -> str:
    return "stop" if gen.stopped else "length"


def _usage(gen: Generation) -> dict:
    return {"prompt_tokens": gen.prompt_tokens or 0, "completion_tokens": gen.new_tokens,
            "total_tokens": (gen.prompt_tokens or 0) + gen.new_tokens}


def _extras(gen: Generation, settings: GenerationSettings) -> dict:
    return {"decoding": settings.decoding, "error": gen.error, "seconds": round(gen.seconds, 3)}


def parse_request(body, batchers: Mapping[str, Batcher], default: GenerationSettings,
                  read_note) -> tuple[str, str, GenerationSettings]:
    """(role, note, settings) of a request, or a RequestError saying what to send; `read_note(body,
    backend)` finds the note and prompt in it (chat messages, or a completion's token ids)."""
    if not isinstance(body, dict):
        raise RequestError(400, "invalid_request", "Send a JSON object.")
    model = body.get("model")
    if model not in batchers:
        raise RequestError(404, "model_not_found", f"The model {model!r} does not exist here; this server "
                                                   f"serves: {', '.join(batchers)}.", "model")
    if not isinstance(body.get("stream", False), bool):
        raise RequestError(400, "invalid_value", "stream must be true or false.", "stream")
    if body.get("n", 1) != 1:
        raise RequestError(400, "unsupported", "Only n = 1 is supported (greedy decoding has one answer).", "n")
    note, prompt = read_note(body, batchers[model].backend)
    settings = replace(default, decoding=_decoding(body, note, default.decoding), prompt=prompt)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestError(400, "invalid_value", "max_tokens must be a positive integer.", "max_tokens")
        # The client's bound applies where it is tighter than the harness's own per-note bound.
        limit = getattr(batchers[model].backend, "answer_limit", None)
        if limit is None or max_tokens < limit(note, settings):
            settings = replace(settings, max_new_tokens=max_tokens)
    return model, note, settings


def _note(messages) -> tuple[str, str]:
    """The note, and which of the harness's prompts the request used (no system message: the trained one)."""
    wrong = RequestError(400, "invalid_messages", "Send one user message holding the clinical note, after no "
                                                  "system message or the one the adapter was trained with.",
                         "messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise wrong
    roles = [m.get("role") for m in messages]
    if roles not in (["user"], ["system", "user"]) or not all(isinstance(m.get("content"), str) for m in messages):
        raise wrong
    if roles[0] == "user":
        return messages[0]["content"], "trained"
    known = {text: name for name, text in PROMPTS.items()}
    if messages[0]["content"] not in known:
        raise RequestError(400, "unknown_prompt", "This server extracts with the system prompt its adapter was "
                                                  f"trained with: send {SYSTEM_PROMPT!r} or no system message "
                                                  "(or the harness's engineered zero-shot prompt).", "messages")
    return messages[1]["content"], known[messages[0]["content"]]


def _note_of_ids(prompt, backend) -> tuple[str, str]:
    """The note and prompt of a completion's token ids (one prompt, or a list holding one)."""
    ids = prompt[0] if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list) else prompt
    if not (isinstance(ids, list) and ids and all(type(i) is int and i >= 0 for i in ids)):
        raise RequestError(400, "invalid_prompt", "Send one prompt as token ids (harness.prompt.prompt_ids); "
                                                  "send text as chat messages to /v1/chat/completions.", "prompt")
    read = getattr(backend, "read_prompt", None)
    found = read(ids) if read else None
    if found is None:
        raise RequestError(400, "unknown_prompt", "These token ids are not a prompt this model reads: send "
                                                  "harness.prompt.prompt_ids of one note, with the note cut at "
                                                  "its spaces where the adapter was trained so (its manifest "
                                                  "says), or send chat messages.", "prompt")
    return found


def _decoding(body: dict, note: str, default: str) -> str:
    fmt, structured = body.get("response_format"), body.get("structured_outputs")
    if structured is not None:
        grammar = structured.get("grammar") if isinstance(structured, dict) else None
        if grammar != grammar_for("grounded", note):
            raise RequestError(400, "unsupported_grammar", "The only grammar this server takes is the note's "
                                                           "grounded grammar (harness.grammar).", "structured_outputs")
        return "grounded"
    if fmt is None:
        return default
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return "free"
    schema = fmt.get("json_schema") if kind == "json_schema" else None
    if isinstance(schema, dict) and schema.get("schema") == SCHEMA:
        return "schema"
    raise RequestError(400, "unsupported_response_format", "response_format must be {\"type\": \"text\"} or a "
                                                           "json_schema holding schema v1.", "response_format")
