"""An adapter as llama.cpp and Ollama load it: GGUF files written by llama.cpp's own converters.

Two forms. `gguf`: the adapter merged into its base, one model file. `gguf-lora`: a GGUF LoRA and the
GGUF base it belongs on. A QLoRA adapter learned the NF4 copy of its base (harness.nf4_grid), so both
forms are built from the NF4 grid: on llama.cpp's own Q4_1 copy of the embedded model the reference
adapter lost 0.12 F1 and 33 points of schema validity (issue #14), as it does on the shipped weights.

The converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py and the gguf-py they were written with)
come from llama-cpp-python's source distribution, pinned below: `scripts/setup.sh` unpacks them once
into the cache (install_converters). Nothing here needs llama.cpp itself to be built.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from harness.atomic import staged_folder
from harness.errors import HarnessError
from harness.hashing import sha256_file
from harness.settings import cache_root

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python release whose vendored llama.cpp converts
_MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what both converters write


def converters_dir() -> Path:
    """SUNRISE_LLAMA_CPP_DIR (a llama.cpp source tree), else the unpacked copy in the cache."""
    return Path(os.environ.get("SUNRISE_LLAMA_CPP_DIR") or cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON}")


def install_converters() -> Path:
    """Unpack llama.cpp's converters from the llama-cpp-python sdist (downloaded by pip, no build)
    into converters_dir(); a no-op when they are there. A folder named by SUNRISE_LLAMA_CPP_DIR is the
    user's: it is checked, never written."""
    target = converters_dir()
    if os.environ.get("SUNRISE_LLAMA_CPP_DIR"):
        return require_converters()
    with contextlib.suppress(HarnessError):
        return require_converters()
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                              f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if got.returncode or not sdists:
            raise HarnessError(f"could not download llama-cpp-python {LLAMA_CPP_PYTHON}'s source: "
                               f"{got.stderr.strip()[-500:]}")
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(sdists[0]) as tar, staged_folder(target) as staging:
            wanted = [m for m in tar.getmembers()
                      if m.name.startswith(prefix) and m.name[len(prefix):].split("/")[0] in _MEMBERS]
            for member in wanted:
                member.name = member.name[len(prefix):]
            tar.extractall(staging, members=wanted, filter="data")
    return target


def require_converters() -> Path:
    """converters_dir(), or a HarnessError saying how to get the converters there."""
    folder = converters_dir()
    missing = [m for m in _MEMBERS if not (folder / m).exists()]
    if missing:
        raise HarnessError(f"llama.cpp's converters are not at {folder} (no {', '.join(missing)}): run "
                           f"scripts/setup.sh, which unpacks them from llama-cpp-python {LLAMA_CPP_PYTHON}'s source, "
                           "or set SUNRISE_LLAMA_CPP_DIR to a llama.cpp checkout")
    return folder


def convert(script: str, args: list[str]) -> None:
    """Run one of llama.cpp's converters with this interpreter (it puts its own gguf-py first on the path)."""
    path = require_converters() / script
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True)
    if done.returncode:
        raise HarnessError(f"llama.cpp's {script} failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")


def gguf_record(path: Path, outtype: str) -> dict:
    return {"file": path.name, "outtype": outtype, "sha256": sha256_file(path),
            "converter": f"llama.cpp from llama-cpp-python {LLAMA_CPP_PYTHON}"}
