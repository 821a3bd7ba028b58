"""Who asks MKL for shape-independent sums: generation and the test session do, training does not."""

import os
import subprocess
import sys

from harness.numerics import CBWR, blas_is_batch_invariant


def test_the_test_session_is_pinned_before_torch_runs():
    assert os.environ.get("MKL_CBWR") == CBWR and blas_is_batch_invariant()


def test_importing_the_harness_and_the_trainer_leaves_mkl_in_its_fastest_mode():
    """Strict mode costs training 1.4x per step (benchmarks/training.py), and training needs no
    invariance: only loading a model for generation pins it."""
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    code = "import os, harness, harness.models, train.trainer; print(os.environ.get('MKL_CBWR'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
