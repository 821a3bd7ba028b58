"""Where llama.cpp's converters come from (the GGUF exports themselves: tests/harness/test_export.py)."""

import pytest

from harness.errors import HarnessError
from harness.gguf_export import install_converters, require_converters


def test_a_llama_cpp_folder_the_user_names_is_checked_and_never_written(tmp_path, monkeypatch):
    checkout = tmp_path / "llama.cpp"
    checkout.mkdir()
    (checkout / "convert_hf_to_gguf.py").write_text("")
    monkeypatch.setenv("SUNRISE_LLAMA_CPP_DIR", str(checkout))
    with pytest.raises(HarnessError, match=r"no convert_lora_to_gguf.py, conversion, gguf-py\): run scripts/setup"):
        install_converters()
    assert [p.name for p in checkout.iterdir()] == ["convert_hf_to_gguf.py"]
    for member in ("convert_lora_to_gguf.py", "conversion", "gguf-py"):
        (checkout / member).mkdir()
    assert install_converters() == require_converters() == checkout
