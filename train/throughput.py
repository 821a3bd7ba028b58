"""What training throughput is measured against: the machine's matmul bound and the model's FLOPs per token."""

from __future__ import annotations

import time


def matmul_bound(dtype: str = "float32", size: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """GFLOP/s of a square matmul on the training device, the best of `repeats` after a warm-up; on a CPU
    with `threads` threads (default: this process's), so that a run split over processes of one thread
    each is measured against all the cores it trained on, not one."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    before = torch.get_num_threads()
    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        a, b = (torch.randn(size, size, dtype=getattr(torch, dtype), device=device) for _ in range(2))
        a @ b
        best = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2 * size**3 / best / 1e9


def flops_per_token(config) -> float:
    """4 x the matmul weights a token passes through (a transformers config of a Llama-style model):
    forward 2, backward 2 for the activation gradients; the frozen base needs no weight gradients and
    LoRA's own matmuls are under 1 %. The same for every lever, so a fraction of the bound compares
    useful work: skipping waste (padding, prompt logits) shows as a higher fraction."""
    head = config.hidden_size // config.num_attention_heads
    per_layer = (2 * config.hidden_size * config.hidden_size
                 + 2 * config.hidden_size * config.num_key_value_heads * head
                 + 3 * config.hidden_size * config.intermediate_size)
    return 4 * (config.num_hidden_layers * per_layer + config.vocab_size * config.hidden_size)
