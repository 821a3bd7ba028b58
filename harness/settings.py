"""Where the harness keeps its caches; one setting, read in one place."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """SUNRISE_CACHE_DIR, else ~/.cache/sunrise: converted models, hashes and generations live here."""
    return Path(os.environ.get("SUNRISE_CACHE_DIR") or Path.home() / ".cache" / "sunrise")


# The committed reference adapter: the default adapter under test, and its recorded baseline run.
REFERENCE_ADAPTER = Path(__file__).resolve().parent.parent / "fixtures" / "reference-adapter"
REFERENCE_BASELINE = REFERENCE_ADAPTER / "baseline.json"
