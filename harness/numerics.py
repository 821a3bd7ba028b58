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
    MKL's own or float64 ones (`float64_products`)."""
    invariant = attn_implementation is None and (getattr(model, "float64_products", False)
                                                 or blas_is_batch_invariant(model.device))
    return "batch-invariant" if invariant else "batch-dependent"


def float64_products(model, memory_share: float = 0.25) -> bool:
    """Where MKL's strict mode leaves a row of a product dependent on the rows beside it, every linear
    product of the model runs in float64 on a float64 copy of its weight and is rounded back, as attention
    is: the sums still group by shape, but their last-bit differences vanish in the rounding. MKL takes
    CNR's instruction branches only on Intel CPUs: on an AMD EPYC with AVX2 it reports 'CNR:AUTO,STRICT'
    for MKL_CBWR=AVX2,STRICT, and one row alone differs from the same row among others by up to 2e-5.
    Linear layers only: the harness's NF4 layers once dequantised (`dequantise_once`), the LM head, and
    LoRA's. Returns whether it did; not on a GPU, where MKL is not used, nor where the copies (8 bytes a
    weight) would take more than `memory_share` of the machine's memory, nor where an NF4 layer kept
    dequantising per call. The model's identity records it (`products`), so cached outputs of one
    arithmetic are never served for the other."""
    import bitsandbytes as bnb
    import torch

    if model.device.type != "cpu" or blas_is_batch_invariant():
        return False
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, bnb.nn.Linear4bit))]
    if any(isinstance(m, bnb.nn.Linear4bit) and not hasattr(m, "dense_weight") for m in layers):
        return False
    weights = sum(m.out_features * m.in_features for m in layers)
    if not _fits(weights * 8, memory_share):
        return False
    with torch.no_grad():
        for module in layers:
            weight = module.dense_weight if hasattr(module, "dense_weight") else module.weight
            module.weight64 = weight.detach().double()
            module.forward = _float64_forward.__get__(module)
    model.float64_products = True
    return True


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


def _float64_forward(self, x):
    """A linear layer's product in float64, rounded back to the input's dtype (see float64_products)."""
    import torch

    bias = None if self.bias is None else self.bias.double()
    return torch.nn.functional.linear(x.double(), self.weight64, bias).to(x.dtype)


def _dense_forward(self, x):
    """Linear4bit.forward with the weight dequantised once (see dequantise_once)."""
    import torch

    bias = None if self.bias is None else self.bias.to(self.dense_weight.dtype)
    return torch.nn.functional.linear(x.to(self.dense_weight.dtype), self.dense_weight, bias).to(x.dtype)
