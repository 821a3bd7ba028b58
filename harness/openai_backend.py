"""Models served over HTTP by any OpenAI-compatible chat-completions server (vLLM with LoRA adapters,
llama.cpp, Ollama, Groq, `sunrise serve`), behind the one Backend protocol.

A served model is named `openai:MODEL@BASE_URL`, e.g. `openai:cand@http://gpu-box:8000/v1`; a
`#SHA256` suffix records the sha256 of the adapter the server loaded (its weights cannot be hashed
from there, so otherwise the cache trusts the name), and a `#FOLDER` suffix names a copy of that
adapter here, hashed and read here. An adapter trained on notes cut at their spaces
(harness.prompt.prompt_ids) must be read so, which a server that tokenizes the note itself does not
do: its prompts go to /v1/completions as token ids, made here with its base model's tokenizer.

Answers are streamed, and a stream is closed where the answer starts repeating itself
(harness.decoding.LoopWatch), as in-process decoding stops a row that loops: the server stops
generating, a looping answer costs what its loop's first copies cost, not its whole bound, and it is
recorded as looped. `sunrise serve` stops loops itself, by the model's tokens: its answers are read whole.

The API key is read from OPENAI_API_KEY and never leaves the request's Authorization header:
errors, summaries and reports never hold it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from harness.decoding import TEXT_LOOP, LoopWatch
from harness.errors import AdapterError, HarnessError, ModelNotFoundError
from harness.grammar import grammar_for
from harness.models import (
    ANSWER_BOUND,
    SPLIT_NOTE,
    AdapterInfo,
    Generation,
    GenerationSettings,
    Listener,
    answer_bound,
    hub_snapshot,
    inspect_adapter,
    is_hub_id,
    resolve_base,
    token_limit,
)
from harness.prompt import messages, prompt_ids
from harness.schema import RESOURCE_TYPE, SCHEMA, dumps, empty_summary

SKELETON_BYTES = len(dumps(empty_summary()).encode())

PREFIX = "openai:"
API_KEY_ENV = "OPENAI_API_KEY"
# What a server's /v1/models entry says of a model that stays the same while it serves the same
# weights; `created` (often the time of the request) and permission ids would change every cache key.
STABLE_MODEL_FIELDS = ("id", "object", "owned_by", "root", "parent", "max_model_len", "context_window", "sunrise")
REQUEST = {"temperature": 0, "seed": 0}  # greedy, and a seed for servers that sample anyway
# How each decoding mode is asked of the server (structured_output below), as the summary records it.
DECODING_REQUESTS = {"free": 'response_format {"type": "text"}',
                     "schema": "response_format json_schema: schema v1, strict",
                     "grounded": "structured_outputs.grammar: the note's grounded Lark grammar (vLLM)"}


def is_served(name: str | None) -> bool:
    return bool(name) and str(name).startswith(PREFIX)


@dataclass(frozen=True)
class ServedModel:
    model: str  # the name the server serves it under (vLLM: --served-model-name, or a --lora-modules name)
    base_url: str  # up to and including /v1
    adapter: str | None = None  # user-given: the sha256 of the adapter the server loaded, or its folder here

    @classmethod
    def parse(cls, text: str, default_url: str | None = None) -> ServedModel:
        """`openai:MODEL@URL[#SHA256|#FOLDER]`; an adapter may leave out `@URL` to use its base model's server."""
        if not is_served(text):
            raise ValueError(f"a served model is named {PREFIX}MODEL@URL, got {text!r}")
        body, _, sha = text[len(PREFIX):].partition("#")
        model, _, url = body.partition("@")
        url = url or default_url or ""
        if not model or not url.startswith(("http://", "https://")):
            raise ValueError(f"a served model is named {PREFIX}MODEL@URL, e.g. "
                             f"{PREFIX}Qwen/Qwen2.5-3B-Instruct@http://localhost:8000/v1; got {text!r}")
        return cls(model, url.rstrip("/"), sha or None)


# Request fields the backend sets itself (per note, or by decoding mode); extra fields may not replace them.
OWN_FIELDS = ("model", "messages", "prompt", "max_tokens", "response_format", "structured_outputs", "stream")


@dataclass(frozen=True)
class HTTPOptions:
    concurrency: int = 8  # requests in flight at once
    timeout_s: float = 120.0  # per request, per attempt
    max_retries: int = 4  # on 408/409/429/5xx, timeouts and refused connections, with backoff (Retry-After honoured)
    # Server-specific request fields, sent with every request and part of the model's identity. Some
    # servers are not greedy at temperature 0 by default: llama-cpp-python's applies a repeat penalty
    # of 1.1 unless a request sets {"repeat_penalty": 1}.
    extra_body: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.concurrency < 1 or self.timeout_s <= 0 or self.max_retries < 0:
            raise ValueError("HTTP options: concurrency >= 1, timeout > 0 and retries >= 0")
        if not isinstance(self.extra_body, dict):
            raise ValueError(f"extra request fields must be a JSON object, got {self.extra_body!r}")
        own = sorted(set(self.extra_body) & set(OWN_FIELDS))
        if own:
            raise ValueError(f"extra request fields may not set {', '.join(own)}: the harness sets them itself")


class OpenAIBackend:
    """Chat completions, one request per note, a bounded number in flight; each failure is that
    note's error (not cached: the next run asks again) and the run goes on."""

    def __init__(self, served: ServedModel, options: HTTPOptions = HTTPOptions(), api_key: str | None = None):
        import openai

        self.served, self.options = served, options
        self._key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        # Servers without authentication (vLLM, llama.cpp and `sunrise serve` by default) take any key.
        self.client = openai.OpenAI(base_url=served.base_url, api_key=self._key or "none",
                                    timeout=options.timeout_s, max_retries=options.max_retries)
        adapter = _local_adapter(served.adapter)
        # None: chat messages, tokenized by the server; else the tokenizer that cuts notes here.
        self.tokenizer = _base_tokenizer(adapter) if adapter and adapter.split_note_spaces else None
        served_as = self._describe()
        # `sunrise serve` describes itself (its models' identities): it stops loops by the model's tokens.
        self.streams = "sunrise" not in served_as
        self.identity = {
            "model": f"{PREFIX}{served.model}",
            "base_url": served.base_url,
            "served": served_as,
            **({"loop": {"rule": list(TEXT_LOOP), "in": "characters of the streamed answer"}} if self.streams else {}),
            "adapter_sha256": adapter.sha256 if adapter else served.adapter,
            "request": {**REQUEST, **options.extra_body},
            "decoding_requests": DECODING_REQUESTS,
            "answer_bound": list(ANSWER_BOUND),
            **({"note_tokens": SPLIT_NOTE, "prompt_as": f"token ids to /v1/completions ({adapter.base_name} "
                                                        "tokenizer)"} if self.tokenizer else {}),
        }

    def _describe(self) -> dict:
        """What GET /v1/models says of the model; a wrong key, an unreachable server or an unknown name
        stops the role here with one clear message, before any note is sent."""
        import openai

        try:
            listed = self.client.models.list().data
        except openai.AuthenticationError:
            raise HarnessError(f"{self.served.base_url} refused the API key (401); set {API_KEY_ENV} to a key "
                               "this server accepts") from None
        except openai.APIConnectionError:
            raise ModelNotFoundError(f"could not reach {self.served.base_url} (is the server running?)") from None
        except openai.APIError as exc:
            raise HarnessError(f"{self.served.base_url}/models failed: {self._redact(str(exc))}") from None
        entries = {m.id: m.model_dump() for m in listed}
        if self.served.model not in entries:
            raise ModelNotFoundError(f"{self.served.base_url} does not serve {self.served.model!r}; it serves: "
                                     f"{', '.join(sorted(entries)) or 'nothing'}")
        entry = entries[self.served.model]
        return {k: entry[k] for k in STABLE_MODEL_FIELDS if entry.get(k) is not None}

    def max_new_tokens(self, note: str, settings: GenerationSettings) -> int:
        """The in-process limit (schema skeleton + 3 x note tokens + 16), counted in UTF-8 bytes: no
        byte-level tokenizer makes more tokens than bytes, so this is never below the bound the model
        would get in process (`sunrise serve` applies that one itself). A looping answer is cut where it
        starts repeating itself, long before this."""
        return token_limit(answer_bound(settings, SKELETON_BYTES, len(note.encode())), note, settings)

    @staticmethod
    def structured_output(settings: GenerationSettings, note: str) -> dict:
        """The request's structured-output part: `free` asks for text; `schema` sends schema v1 as
        OpenAI's json_schema response_format (vLLM, llama.cpp and Groq take it too); `grounded` sends
        the note's Lark grammar as vLLM's structured_outputs (its guidance backend reads Lark)."""
        if settings.decoding == "free":
            return {"response_format": {"type": "text"}}
        if settings.decoding == "schema":
            return {"response_format": {"type": "json_schema", "json_schema": {
                "name": RESOURCE_TYPE, "schema": SCHEMA, "strict": True}}}
        return {"extra_body": {"structured_outputs": {"grammar": grammar_for("grounded", note)}}}

    def generate(self, notes: list[str], settings: GenerationSettings,
                 listener: Listener | None = None) -> list[Generation]:
        with ThreadPoolExecutor(min(self.options.concurrency, max(1, len(notes)))) as pool:
            return list(pool.map(lambda i: self._one(notes[i], settings, listener and (
                lambda text: listener(i, text))), range(len(notes))))

    def _one(self, note: str, settings: GenerationSettings,
             report: Callable[[str], bool | None] | None) -> Generation:
        import openai

        t0 = time.perf_counter()
        limit = self.max_new_tokens(note, settings)
        request = self.structured_output(settings, note)
        extra_body = {**self.options.extra_body, **request.pop("extra_body", {})}
        streaming = {"stream": True, "stream_options": {"include_usage": True}} if self.streams else {}
        try:
            if self.tokenizer is None:
                response = self.client.chat.completions.create(
                    model=self.served.model, messages=messages(note, prompt=settings.prompt), max_tokens=limit,
                    **REQUEST, **request, **streaming, extra_body=extra_body or None)
            else:  # the SDK's completions take no response_format argument: it goes as an extra field
                response = self.client.completions.create(
                    model=self.served.model, max_tokens=limit, **REQUEST, **streaming,
                    extra_body={**extra_body, **request},
                    prompt=prompt_ids(self.tokenizer, note, settings.prompt, split_note_spaces=True))
            # A constrained answer is never cut: its grammar, not the cut, has to close it.
            answer = _streamed(response, not settings.constrained, report) if self.streams else _whole(response)
        except openai.APIStatusError as exc:
            return self._failed(t0, f"the server answered {exc.status_code}: {_message(exc)}")
        except openai.APITimeoutError:
            return self._failed(t0, f"no answer within {self.options.timeout_s:g} s "
                                    f"({self.options.max_retries} retries)")
        except openai.APIConnectionError:
            return self._failed(t0, f"could not connect to {self.served.base_url} "
                                    f"({self.options.max_retries} retries)")
        except Exception as exc:  # noqa: BLE001 - a malformed answer is this note's error, not the run's
            return self._failed(t0, f"unreadable answer from the server ({exc.__class__.__name__}: {exc})")
        error = (f"the constrained answer did not close within {limit} new tokens"
                 if settings.constrained and not answer.stopped else None)
        return Generation(text=answer.text, seconds=time.perf_counter() - t0, new_tokens=answer.tokens,
                          stopped=answer.stopped, looped=answer.looped, error=error)

    def _failed(self, t0: float, error: str) -> Generation:
        return Generation(text="", seconds=time.perf_counter() - t0, new_tokens=0, stopped=False,
                          error=self._redact(error), transient=True)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[API key]") if self._key else text


@dataclass(frozen=True)
class _Answer:
    text: str
    stopped: bool  # the server ended it (finish_reason "stop"), not its bound or a loop
    tokens: int  # the server's count where it gave one, else the pieces received (about one a token)
    looped: bool = False


def _whole(response) -> _Answer:
    choice = response.choices[0]
    text = (choice.message.content if hasattr(choice, "message") else choice.text) or ""
    return _Answer(text, choice.finish_reason == "stop",
                   response.usage.completion_tokens if response.usage else len(text.split()))


def _streamed(stream, cut: bool, report: Callable[[str], bool | None] | None = None) -> _Answer:
    """The answer a stream of chat or completion chunks spells; with `cut`, up to where it starts
    repeating itself, the stream closed there (which stops the server's generation). `report` gets
    the answer so far after each piece; where it returns True (nobody reads the answer any more), the
    stream is closed there too."""
    watch, pieces, looped, finish, counted = LoopWatch(), [], False, None, None
    with stream:
        for chunk in stream:
            if chunk.usage:
                counted = chunk.usage.completion_tokens
            for choice in chunk.choices:
                piece = (choice.delta.content if hasattr(choice, "delta") else choice.text) or ""
                if piece:
                    pieces.append(piece)
                    loop_at = None if looped else watch.feed(piece)
                    looped = looped or loop_at is not None
                    if loop_at is not None and cut:
                        return _Answer("".join(pieces)[:loop_at], False, len(pieces), True)
                    if report is not None and report("".join(pieces)):
                        return _Answer("".join(pieces), False, len(pieces), looped)
                finish = choice.finish_reason or finish
    if finish is None:
        raise ValueError("the stream ended before the answer did")
    return _Answer("".join(pieces), finish == "stop", counted if counted is not None else len(pieces), looped)


def _local_adapter(adapter: str | None) -> AdapterInfo | None:
    """The adapter a `#` suffix names, where it names a folder here rather than a sha256."""
    if adapter is None or re.fullmatch(r"[0-9a-fA-F]+", adapter):
        return None
    try:
        return inspect_adapter(adapter)
    except AdapterError as exc:
        raise AdapterError(f"{PREFIX}NAME#{adapter}: after '#' goes the sha256 of the adapter the server loaded, "
                           f"or a copy of its folder here ({exc})") from None


# What a tokenizer loads from a hub model: config, tokenizer and chat template, no weights.
TOKENIZER_FILES = ("*.json", "*.txt", "*.model", "*.jinja")


def _base_tokenizer(adapter: AdapterInfo):
    """The tokenizer of the base model `adapter` was trained on, found here as harness.models finds bases;
    for a hub id, its tokenizer's files alone, not the weights resolve_base would fetch to hash them (the
    served model's 6 GB, for Qwen2.5-3B, to make token ids)."""
    from transformers import AutoTokenizer

    name, hub = adapter.base_name, is_hub_id(adapter.base_name)
    try:
        folder = hub_snapshot(name, TOKENIZER_FILES) if hub else resolve_base(name).folder
    except ModelNotFoundError as exc:
        fetch = (f"; {name!r}'s tokenizer files are enough: huggingface-cli download {name} --include "
                 + " ".join(f"'{f}'" for f in TOKENIZER_FILES)) if hub else ""
        raise ModelNotFoundError(f"{adapter.path} reads notes cut at their spaces, so its prompts are made here as "
                                 f"token ids, with its base model's tokenizer: {exc}{fetch}") from None
    return AutoTokenizer.from_pretrained(folder)


def _message(exc) -> str:
    """The server's own error message (OpenAI's {"error": {"message"}} shape), else the status line."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or exc.message)[:300]
