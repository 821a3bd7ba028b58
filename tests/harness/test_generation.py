"""The generation cache and the cached, batched generator, over the scripted fake backend."""

import json
from dataclasses import replace

import pytest

from harness.cache import GenerationCache
from harness.errors import InputError
from harness.generation import Generator
from harness.models import FakeBackend, Generation, GenerationSettings


@pytest.fixture
def cache(tmp_path):
    return GenerationCache(tmp_path / "gen")


def test_fake_backend_returns_scripted_outputs():
    fake = FakeBackend({"a": "first"})
    fake.script("b", {"x": 1})
    out = fake.generate(["a", "b"], GenerationSettings())
    assert [g.text for g in out] == ["first", '{"x":1}'] and fake.calls == [["a", "b"]]


def test_rerun_of_unchanged_notes_generates_nothing(cache):
    fake = FakeBackend(lambda note: note.upper())
    first = Generator(fake, cache=cache).run(["a", "b", "c"])
    again = Generator(fake, cache=cache).run(["c", "a", "b"])
    assert [r.generation.text for r in again] == ["C", "A", "B"]
    assert all(r.generation.cached for r in again) and not any(r.generation.cached for r in first)
    assert len(fake.calls) == 1 and cache.hits == 3


def test_another_model_or_settings_misses_the_cache(cache):
    Generator(FakeBackend(lambda n: "x", name="one"), cache=cache).run(["a"])
    other = FakeBackend(lambda n: "y", name="two")
    assert Generator(other, cache=cache).run(["a"])[0].generation.text == "y"
    longer = Generator(FakeBackend(lambda n: "z", name="one"), GenerationSettings(max_new_tokens=7), cache=cache)
    assert longer.run(["a"])[0].generation.text == "z"


def test_corrupt_entry_is_regenerated_never_trusted(cache):
    fake = FakeBackend(lambda n: "good")
    gen = Generator(fake, cache=cache)
    gen.run(["a"])
    path = next(cache.root.rglob("*.json"))
    path.write_text('{"key": "' + path.stem + '", "text": ')  # truncated write
    assert gen.run(["a"])[0].generation.text == "good" and cache.corrupt == 1
    path.write_text(json.dumps({"key": "someone-else", "text": "poison"}))  # entry of another key
    assert gen.run(["a"])[0].generation.text == "good" and cache.corrupt == 2
    assert json.loads(path.read_text())["text"] == "good"  # overwritten atomically


def test_cache_leaves_no_temporary_files(cache):
    Generator(FakeBackend(), cache=cache).run([f"note {i}" for i in range(40)])
    assert not list(cache.root.rglob("*.tmp")) and len(list(cache.root.rglob("*.json"))) == 40


class Refusing(FakeBackend):
    """Refuses any batch holding a note marked BAD, like a backend refusing an over-long note."""

    def generate(self, notes, settings):
        if any("BAD" in n for n in notes):
            raise InputError("the note is too long")
        return super().generate(notes, settings)


def test_one_bad_note_does_not_cost_the_others(cache):
    results = Generator(Refusing(lambda n: "ok"), cache=cache).run(["a", "BAD", "", "b"])
    assert [r.error for r in results] == [None, "the note is too long", "the note is empty", None]
    assert [r.generation and r.generation.text for r in results] == ["ok", None, None, "ok"]


def test_progress_and_chunking(cache):
    fake = FakeBackend(lambda n: n)
    seen = []
    Generator(fake, cache=cache).run([f"n{i}" for i in range(70)], on_done=seen.append)
    assert sum(seen) == 70 and [len(c) for c in fake.calls] == [32, 32, 6]


def test_generation_record_is_frozen():
    g = Generation(text="x", seconds=0.1, new_tokens=1, stopped=True)
    with pytest.raises(AttributeError):
        g.text = "y"


class Looping(FakeBackend):
    """Says a note holding LOOP was cut where the model began repeating itself."""

    def generate(self, notes, settings):
        return [replace(g, stopped=False, looped=True) if "LOOP" in note else g
                for note, g in zip(notes, super().generate(notes, settings), strict=True)]


def test_a_looped_answer_says_so_when_read_back_from_the_cache(cache):
    runs = [Generator(Looping(lambda n: "again"), cache=cache).run(["LOOP", "fine"]) for _ in range(2)]
    for results in runs:
        assert [(r.generation.looped, r.generation.stopped) for r in results] == [(True, False), (False, True)]
    assert [r.generation.cached for r in runs[1]] == [True, True]
