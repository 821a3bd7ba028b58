"""Library versions, recorded with every run so a result can be traced to what produced it."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

LIBRARIES = ("sunrise-harness", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "hypothesis",
             "pytest")


def versions(libraries: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for lib in libraries:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = None
    return out
