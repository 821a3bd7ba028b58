"""Generation's arithmetic: a note's output must depend neither on the notes it shares a batch with
nor on the kind of CPU (NF4 runs in float32 on weights dequantised once, as training computes:
`dequantise_once`). The rest of this docstring is about the batch.

Batched greedy decoding gave different outputs for some notes than decoding them one at a time
(benchmarks/batch_invariance.py measures how many), for two reasons, both found by comparing logits:

1. Matrix products. MKL picks its kernels and its threads' share of the work by the number of rows,
   so row i of X @ W changes in the last bits with the rows beside it (1 vs 2 vs 16 rows: up to 4e-5
   in the logits, NF4 and float32 alike). MKL's conditional numerical reproducibility in strict mode
   (MKL_CBWR="AVX2,STRICT") fixes the order of every sum whatever the shape: set before MKL's first
   call, the products became identical for any number of rows.
2. Attention over padding. A left-padded row attends over more key positions than it does alone;
   the masked ones weigh exactly zero, but the vectorised sums group the rest differently. Attention
   computed in float64 (below) still groups them differently, but its last-bit differences vanish
   when the result is rounded back to float32. (Attention one row at a time, over each row's own
   keys, is exact by construction, but it measured 2.2x slower than this.)
3. The prefill's logits, which come from a strided slice of the hidden states whose layout depends
   on the batch's width: the prompt's last token goes through a decode step instead (harness.decoding).

Everything else in the model (norms, rotary embeddings, activations) works row by row already.
The same two fixes make a token's logits the same whether the tokens before it were prefilled
together or decoded one at a time (products of any number of rows, attention over any number of
keys), which lets a constrained decoding go on from the beginning it shares with a free one
(harness.models, HFBackend._free_decodes_of; 0 of 238 answers differed, README).
"""

from __future__ import annotations

import functools
import os

CBWR = "AVX2,STRICT"
ATTENTION = "sunrise_float64"


def pin_reproducible_blas() -> None:
    """Ask MKL for shape-independent sums; it reads this once, at its first call, so the harness sets
    it before it loads a model for generation, and the pytest plugin at start-up (a user's own
    MKL_CBWR is kept). Training does not: it needs no invariance and strict mode costs it 1.4x.
    `blas_is_batch_invariant` checks whether it took; a model's identity records the answer."""
    os.environ.setdefault("MKL_CBWR", CBWR)


def blas_is_batch_invariant(device="cpu") -> bool:
    """Whether a row of a matrix product is the same alone and among others on `device`."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(384, 256, generator=gen).to(device)
    x = torch.randn(17, 256, generator=gen).to(device)
    alone = x[:1] @ w.T
    return all(torch.equal((x[:m] @ w.T)[:1], alone) for m in (2, 3, 17))


def float64_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA computed in float64 and rounded back: padding regroups the sums, but a float64 sum's
    last-bit changes vanish when it is rounded to float32."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    out, weights = sdpa_attention_forward(module, query.double(), key.double(), value.double(),
                                          attention_mask if attention_mask is None or attention_mask.dtype != dtype
                                          else attention_mask.double(), **kwargs)
    return out.to(dtype), weights


def register_attention() -> str:
    """Register float64 attention with transformers; returns its attn_implementation name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, float64_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # it takes the masks SDPA takes
    return ATTENTION


def numerics(model, attn_implementation: str | None) -> str:
    """How a loaded model's outputs relate to batching, recorded in its identity (and so in the
    cache key): 'batch-invariant' when it runs float64 attention and its products are shape-independent,
    MKL's own or the harness's (`invariant_products`)."""
    invariant = attn_implementation is None and (getattr(model, "invariant_products", None) is not None
                                                 or blas_is_batch_invariant(model.device))
    return "batch-invariant" if invariant else "batch-dependent"


# Products of fewer rows than this take other MKL kernels (on the AMD EPYC measured: 1 to 3 rows).
MIN_ROWS = 4
# The row counts a layer's shape is tried at (`rows_are_invariant`): around MKL's kernel and thread
# boundaries, and up to a prefill's thousands of rows where that costs little.
_TRIED_ROWS = (5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 2500)


def invariant_products(model, memory_share: float = 0.25) -> str | None:
    """Where MKL's strict mode leaves a row of a product dependent on the rows beside it, make every
    linear product of the model independent of them. MKL takes CNR's instruction branches only on
    Intel CPUs: on an AMD EPYC with AVX2 it reports 'CNR:AUTO,STRICT' for MKL_CBWR=AVX2,STRICT, and a
    row alone differs from the same row among others by up to 2e-5. There the dependence came from
    two places only: products of fewer than MIN_ROWS rows (other kernels), and layers with few outputs
    (LoRA's A, 16: another kernel from 16 rows on). So each linear layer (the harness's NF4 layers once
    dequantised, `dequantise_once`; the LM head; LoRA's) whose shape passes `rows_are_invariant` multiplies
    in its own dtype with its rows padded to MIN_ROWS, and any other one in float64 on a float64 copy of its
    weight, rounded back (a float64 sum's last-bit changes vanish in the rounding, as in attention).
    Returns how, for the model's identity (so cached outputs of one arithmetic are never served for
    another), or None: on a GPU, where MKL is invariant, where an NF4 layer kept dequantising per call,
    or where the float64 copies would take more than `memory_share` of the machine's memory."""
    import bitsandbytes as bnb
    import torch

    if model.device.type != "cpu" or blas_is_batch_invariant():
        return None
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, bnb.nn.Linear4bit))]
    if any(isinstance(m, bnb.nn.Linear4bit) and not hasattr(m, "dense_weight") for m in layers):
        return None
    weights = {m: m.dense_weight if hasattr(m, "dense_weight") else m.weight for m in layers}
    wide = {m for m in layers
            if not rows_are_invariant(m.in_features, m.out_features, weights[m].dtype, m.bias is not None)}
    if not _fits(sum(m.out_features * m.in_features for m in wide) * 8, memory_share):
        return None
    with torch.no_grad():
        for module in layers:
            if module in wide:
                module.weight64 = weights[module].detach().double()
                module.forward = _float64_forward.__get__(module)
            else:
                module.product_weight = weights[module]
                module.forward = _padded_forward.__get__(module)
    model.invariant_products = f"rows>={MIN_ROWS}" + (f", float64 on {len(wide)} layers" if wide else "")
    return model.invariant_products


@functools.cache
def rows_are_invariant(in_features: int, out_features: int, dtype, bias: bool) -> bool:
    """Whether MKL computes the first MIN_ROWS rows of a product of this shape the same whatever the
    number of rows below them (tried at `_TRIED_ROWS`, as far as 2 GFLOP a product)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(out_features, in_features, generator=gen).to(dtype)
    b = torch.randn(out_features, generator=gen).to(dtype) if bias else None
    counts = [m for m in _TRIED_ROWS if 2 * m * in_features * out_features <= 2e9]
    x = torch.randn(max(counts, default=MIN_ROWS), in_features, generator=gen).to(dtype)
    first = torch.nn.functional.linear(x[:MIN_ROWS], w, b)
    return all(torch.equal(torch.nn.functional.linear(x[:m], w, b)[:MIN_ROWS], first) for m in counts)


def nf4_kernel(model) -> str:
    """Which arithmetic a loaded model's NF4 layers run, recorded in its identity beside `numerics` so
    a generation cache never serves one arithmetic's outputs for another: on a CPU, float32 on
    dequantised weights (the harness turns bitsandbytes' fused bfloat16 kernel off, see
    `dequantise_once`; a model loaded elsewhere may still run it), on a GPU the device's kernels."""
    import bitsandbytes as bnb

    if model.device.type != "cpu":
        return model.device.type
    fused = any(m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    return "cpu-bf16-fused" if fused else "cpu-fp32-dequantised"


def dequantise_once(model, memory_share: float = 0.25) -> None:
    """NF4 generation on a CPU computes as training does, whatever the CPU: in the compute dtype on
    dequantised weights. bitsandbytes dequantises every weight again on every forward; the base is
    frozen, so each NF4 layer here keeps its dequantised weight and multiplies by it, which gives the
    same bits (bitsandbytes' own CPU path is that dequantisation followed by this `linear`) without the
    dequantisation per token: 1.2x the tokens/s of that path on 2 cores, as fast as the fused
    bfloat16 kernel of CPUs with avx512_bf16 (README). The dense copies take 4 bytes a weight in
    float32 (0.42 GB for SmolLM2-135M); where they would take more than `memory_share` of the
    machine's memory, bitsandbytes keeps dequantising per call: the same arithmetic, slower."""
    import bitsandbytes as bnb
    import torch

    if model.device.type != "cpu":
        return
    # A layer left on the fused kernel keeps it, so `nf4_kernel` stays true; the harness never nests
    # quantisation states, and a nested one stays with bitsandbytes.
    layers = [(m, m.compute_dtype or torch.float32) for m in model.modules()
              if isinstance(m, bnb.nn.Linear4bit) and not m.support_avx512bf16_for_cpu
              and not m.weight.quant_state.nested]
    dense_bytes = sum(m.weight.quant_state.shape.numel() * dtype.itemsize for m, dtype in layers)
    if not _fits(dense_bytes, memory_share):
        return
    for module, dtype in layers:
        state = module.weight.quant_state
        # bitsandbytes' own CPU path (its default gemm_4bit): dequantise to the compute dtype, then linear.
        module.dense_weight = torch.ops.bitsandbytes.dequantize_4bit.default(
            module.weight.data.view(-1, 1), state.absmax, state.blocksize, state.quant_type, state.shape, dtype)
        module.forward = _dense_forward.__get__(module)


def fold_adapter(model):
    """The LoRA adapter of `model` (a peft model whose NF4 base was dequantised once) added into the
    dense weights, and the LoRA layers removed: the same model with one product per linear instead of
    the adapter's two more, its scaling and its addition (1.19x the tokens/s of the reference adapter,
    0 of 48 answers different, README). Not peft's merge, which quantises the merged weight to NF4
    again and so changes the model. Raises ValueError where a base layer has no dense weight (a GPU,
    or too little memory for the copies) or the adapter is not plain LoRA on linears (DoRA, biases)."""
    import torch
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not all(hasattr(m.get_base_layer(), "dense_weight") for m in layers):
        raise ValueError("merging an adapter into NF4 weights needs them dequantised once, which the harness "
                         "does only on a CPU with memory for the dense copies; use quantization 'none' to merge")
    if any(name not in m.lora_A or m.use_dora.get(name) or getattr(m, "lora_bias", {}).get(name)
           for m in layers for name in m.active_adapters):
        raise ValueError("only plain LoRA on linear layers can be merged into NF4 weights (not DoRA, LoRA "
                         "biases or embeddings); use quantization 'none' to merge")
    with torch.no_grad():
        for layer in layers:
            dense = layer.get_base_layer().dense_weight
            for name in layer.active_adapters:
                delta = layer.lora_B[name].weight.float() @ layer.lora_A[name].weight.float()
                dense += (delta * layer.scaling[name]).to(dense.dtype)
    return model.unload()


def _fits(nbytes: int, memory_share: float) -> bool:
    """Whether copies of `nbytes` take at most `memory_share` of the machine's memory."""
    return nbytes <= memory_share * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _padded_forward(self, x):
    """A linear layer's product with at least MIN_ROWS rows, padded with zeros (see invariant_products)."""
    import torch

    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    if count < MIN_ROWS:
        rows = torch.cat([rows, rows.new_zeros(MIN_ROWS - count, rows.shape[1])])
    out = _product(rows, self.product_weight, self.bias)[:count]
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _float64_forward(self, x):
    """A linear layer's product in float64, rounded back to the input's dtype (see invariant_products)."""
    return _product(x, self.weight64, self.bias)


def _dense_forward(self, x):
    """Linear4bit.forward with the weight dequantised once (see dequantise_once)."""
    return _product(x, self.dense_weight, self.bias)


def _product(x, weight, bias):
    """x times `weight` (and its bias) in the weight's dtype, returned in x's."""
    import torch

    bias = None if bias is None else bias.to(weight.dtype)
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)
