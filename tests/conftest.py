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


@pytest.fixture
def cut_adapter_copy(adapter_copy) -> Path:
    """A copy of the reference adapter whose manifest says it reads notes cut at their spaces."""
    manifest = json.loads((adapter_copy / "manifest.json").read_text())
    manifest["hyperparameters"]["split_note_spaces"] = True
    (adapter_copy / "manifest.json").write_text(json.dumps(manifest))
    return adapter_copy


@pytest.fixture
def fake_groq():
    """A local fake of Groq's speech-to-text API on a loopback port; `.url` is its base URL."""
    fake = FakeGroq()
    with running(fake.app()) as url:
        fake.url = url
        yield fake
