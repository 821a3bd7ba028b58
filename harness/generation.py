"""Cached, batched generation over any backend: the one path every caller uses to query a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.cache import GenerationCache, cache_key
from harness.errors import InputError
from harness.models import Backend, Generation, GenerationSettings
from harness.prompt import prompt_version
from harness.settings import cache_root

# Notes handed to the backend at a time: bounds the work an interruption loses and paces progress.
CHUNK = 32


@dataclass(frozen=True)
class Result:
    """One note's outcome: a generation, or the reason the note could not be processed."""

    note: str
    generation: Generation | None
    error: str | None = None


class Generator:
    """Look each note up in the cache; generate only the misses, in batches, and store them."""

    def __init__(self, backend: Backend, settings: GenerationSettings = GenerationSettings(),
                 cache: GenerationCache | None | bool = True):
        self.backend, self.settings = backend, settings
        if cache is True:
            cache = GenerationCache(cache_root() / "generations")
        self.cache = cache or None

    def key(self, note: str) -> str:
        return cache_key(self.backend.identity, note, self.settings.to_dict(), prompt_version(self.settings.prompt))

    def run(self, notes: list[str], on_done: Callable[[int], None] | None = None) -> list[Result]:
        """Results in the order of `notes`. `on_done(n)` reports progress as outputs become available;
        outputs reach the cache chunk by chunk, so an interrupted run keeps what it finished."""
        results: list[Result | None] = [None] * len(notes)
        todo: list[int] = []
        for i, note in enumerate(notes):
            entry = self.cache.get(self.key(note)) if self.cache else None
            if entry is not None:
                gen = Generation(text=entry["text"], seconds=entry["seconds"], new_tokens=entry["new_tokens"],
                                 stopped=entry["stopped"], cached=True, error=entry.get("error"),
                                 looped=entry.get("looped", False))
                results[i] = Result(note, gen, gen.error)
            elif not note.strip():
                results[i] = Result(note, None, "the note is empty")
            else:
                todo.append(i)
        if on_done and len(todo) < len(notes):
            on_done(len(notes) - len(todo))
        todo.sort(key=lambda i: len(notes[i]))  # similar lengths together: less padding per batch
        chunk = max(CHUNK, self.settings.batch_size or 0)
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            for i, res in zip(part, self._generate([notes[i] for i in part]), strict=True):
                results[i] = res
            if on_done:
                on_done(len(part))
        return results  # type: ignore[return-value]

    def _generate(self, notes: list[str]) -> list[Result]:
        """A note the backend refuses (InputError) is retried alone, so one bad note never costs the
        others their outputs."""
        try:
            gens = self.backend.generate(notes, self.settings)
        except InputError as exc:
            if len(notes) == 1:
                return [Result(notes[0], None, str(exc))]
            return [self._generate([note])[0] for note in notes]
        for note, gen in zip(notes, gens, strict=True):
            if self.cache and not gen.transient:
                self.cache.put(self.key(note), {"text": gen.text, "seconds": gen.seconds, "new_tokens": gen.new_tokens,
                                                "stopped": gen.stopped, "error": gen.error, "looped": gen.looped})
        return [Result(note, gen, gen.error) for note, gen in zip(notes, gens, strict=True)]
