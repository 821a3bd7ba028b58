"""Shared fixtures for the project's own tests."""

import shutil
from pathlib import Path

import pytest

from harness.settings import REFERENCE_ADAPTER
from tests.fakes.groq import FakeGroq
from tests.fakes.servers import running

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def adapter_copy(tmp_path) -> Path:
    """A writable copy of the reference adapter, to damage in tests."""
    if not (REFERENCE_ADAPTER / "adapter_model.safetensors").is_file():
        pytest.skip("reference adapter not built yet (sunrise train --profile full)")
    dst = tmp_path / "adapter"
    shutil.copytree(REFERENCE_ADAPTER, dst)
    return dst


@pytest.fixture
def fake_groq():
    """A local fake of Groq's speech-to-text API on a loopback port; `.url` is its base URL."""
    fake = FakeGroq()
    with running(fake.app()) as url:
        fake.url = url
        yield fake
