"""Who asks MKL for shape-independent sums (generation and the test session do, training does not), and
the invariant products that stand in where MKL's strict mode does not give them."""

import os
import subprocess
import sys

import torch

from harness import numerics
from harness.numerics import CBWR, invariant_products


def test_the_test_session_is_pinned_before_torch_runs():
    assert os.environ.get("MKL_CBWR") == CBWR


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(256, 384), torch.nn.Linear(384, 256, bias=False)
        self.narrow = torch.nn.Linear(256, 16, bias=False)  # LoRA A's shape: MKL's rows vary with it on AMD
        self.device = torch.device("cpu")

    def forward(self, x):
        return self.down(torch.relu(self.up(x))) + self.narrow(x).sum(-1, keepdim=True)


def test_invariant_products_make_a_row_independent_of_the_rows_beside_it(monkeypatch):
    # As on a CPU where MKL takes no CNR branch (an AMD EPYC): the check is what decides, so pretend it failed.
    monkeypatch.setattr(numerics, "blas_is_batch_invariant", lambda device="cpu": False)
    torch.manual_seed(0)
    model, x = _Tiny(), torch.randn(17, 256)
    with torch.no_grad():
        before = model(x)
        assert invariant_products(model) == model.invariant_products
        assert numerics.numerics(model, None) == "batch-invariant"
        alone = model(x[:1])
        assert all(torch.equal(model(x[:m])[:1], alone) for m in (2, 3, 4, 17))
        assert alone.dtype == torch.float32 and torch.allclose(alone, before[:1], atol=1e-5)  # the same model
        assert torch.equal(model.up(x), torch.nn.functional.linear(x, model.up.weight, model.up.bias))
        assert model.up(x[:2].view(1, 2, 256)).shape == (1, 2, 384)  # any leading dimensions, as linear takes
    assert numerics.numerics(model, "sdpa") == "batch-dependent"  # attention of another kind regroups sums


def test_a_shape_whose_rows_mkl_varies_even_padded_takes_float64(monkeypatch):
    monkeypatch.setattr(numerics, "blas_is_batch_invariant", lambda device="cpu": False)
    monkeypatch.setattr(numerics, "rows_are_invariant", lambda n_in, n_out, dtype, bias: n_out != 16)
    model = _Tiny()
    assert invariant_products(model) == f"rows>={numerics.MIN_ROWS}, float64 on 1 layers"
    assert model.narrow.weight64.dtype == torch.float64 and not hasattr(model.up, "weight64")
    with torch.no_grad():
        x = torch.randn(3, 256)
        assert model.narrow(x).dtype == torch.float32
        assert torch.allclose(model.narrow(x), x @ model.narrow.weight.T, atol=1e-5)


def test_invariant_products_are_left_off_where_mkl_is_invariant_or_memory_is_short(monkeypatch):
    monkeypatch.setattr(numerics, "blas_is_batch_invariant", lambda device="cpu": True)
    assert invariant_products(_Tiny()) is None
    monkeypatch.setattr(numerics, "blas_is_batch_invariant", lambda device="cpu": False)
    monkeypatch.setattr(numerics, "rows_are_invariant", lambda n_in, n_out, dtype, bias: False)
    model = _Tiny()
    assert invariant_products(model, memory_share=0) is None and not hasattr(model.up, "weight64")
    assert numerics.numerics(model, None) == "batch-dependent"


def test_importing_the_harness_and_the_trainer_leaves_mkl_in_its_fastest_mode():
    """Strict mode costs training 1.4x per step (benchmarks/training.py), and training needs no
    invariance: only loading a model for generation pins it."""
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    code = "import os, harness, harness.models, train.trainer; print(os.environ.get('MKL_CBWR'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
