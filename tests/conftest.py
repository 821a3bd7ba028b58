"""Shared fixtures for the project's own tests."""

import json
import shutil
from pathlib import Path

import pytest

from harness.settings import REFERENCE_ADAPTER
from tests.fakes.groq import FakeGroq
from tests.fakes.servers import running

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded default's tokenizer (read-only: tests share it)."""
    from transformers import AutoTokenizer

    from harness.models import resolve_base

    return AutoTokenizer.from_pretrained(resolve_base("embedded").folder)


@pytest.fixture
def adapter_copy(tmp_path) -> Path:
    """A writable copy of the reference adapter, to damage in tests."""
    dst = tmp_path / "adapter"
    shutil.copytree(REFERENCE_ADAPTER, dst)
    return dst


@pytest.fixture(scope="session")
def usual_adapter(tmp_path_factory) -> Path:
    """The reference adapter with its manifest saying it reads notes as BPE cuts them (read-only: tests
    share it): what llama.cpp can take, since it tokenizes notes itself. Read so, an adapter of its
    recipe loses most of what the cut gained (README, "The reference adapter")."""
    dst = tmp_path_factory.mktemp("usual") / "adapter"
    shutil.copytree(REFERENCE_ADAPTER, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["hyperparameters"]["split_note_spaces"] = False
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.fixture
def fake_groq():
    """A local fake of Groq's speech-to-text API on a loopback port; `.url` is its base URL."""
    fake = FakeGroq()
    with running(fake.app()) as url:
        fake.url = url
        yield fake
