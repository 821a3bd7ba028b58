"""LoRA dropout whose masks come from random bits: the same dropout, cheaper random numbers on a CPU.

peft puts an nn.Dropout on each adapted module's input. On a CPU torch draws that mask with
`bernoulli_`, one random number per value from one generator: 19 % of a full-profile step on 2 cores
(profiled; benchmarks/training.py has the lever). Here each value takes 16 bits of a 64-bit draw,
which is about 3x cheaper for the same drop rate (p rounded to a multiple of 1/65536) and the same
1 / (1 - p) scaling of what is kept. On a GPU torch's fused dropout is already cheap; the trainer
leaves it there.

`share_dropout_masks`: the LoRA layers of one module that read the same input tensor (q, k and v of
an attention block; gate and up of an MLP) drop the same values of it, as LoRA on a fused qkv linear
does, instead of each drawing its own mask: 3 of a Llama layer's 7 masks fewer, and one mask product
in the backward pass where there were two or three.
"""

from __future__ import annotations

import torch


class BitsDropout(torch.nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 65536) - 32768  # int16 bits below it drop their value: P = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        # The whole int64 range, so every 16-bit quarter of a draw is uniform (the upper bound is exclusive).
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
        drop = bits.view(torch.int16)[:n].view(x.shape) < self.threshold
        return _DropScaled.apply(x, drop, 1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _DropScaled(torch.autograd.Function):
    """x with the `drop` values zeroed and the rest times `scale`, and the same for its gradient: what
    `x * keep * scale` computes, to the bit, in two passes over x instead of three (and two over the
    gradient instead of three), with no copy of the mask into x's dtype (x * a bool mask makes one, forward
    and backward)."""

    @staticmethod
    def forward(ctx, x, drop, scale):
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.masked_fill(drop, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (drop,) = ctx.saved_tensors
        return grad.masked_fill(drop, 0).mul_(ctx.scale), None, None


def use_bits_dropout(model: torch.nn.Module) -> int:
    """Replace the nn.Dropout of every LoRA layer in `model` by BitsDropout; returns how many."""
    from peft.tuners.lora import LoraLayer

    replaced = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, dropout in module.lora_dropout.items():
                if isinstance(dropout, torch.nn.Dropout):
                    module.lora_dropout[name] = BitsDropout(dropout.p)
                    replaced += 1
    return replaced


class SharedDropout(torch.nn.Module):
    """One dropout for the LoRA layers of one module. A layer that reads the tensor the previous one
    read gets the previous one's output, mask and all, so autograd sums their gradients before the
    one mask product; a layer that reads another tensor (o after q, k and v) draws its own. The
    output is forgotten when the module's forward ends (`forget`), so it outlives nothing."""

    def __init__(self, dropout: torch.nn.Module):
        super().__init__()
        self.dropout = dropout
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.dropout(x)
        last = self._last
        if last is not None and last[0] is x and last[1] == x._version:  # the same tensor, unchanged
            return last[2]
        out = self.dropout(x)
        self._last = (x, x._version, out)
        return out

    def forget(self, *_) -> None:
        self._last = None


def share_dropout_masks(model: torch.nn.Module) -> int:
    """One SharedDropout per module holding LoRA layers (an attention block, an MLP), in place of each
    layer's own dropout; returns how many. Layers without dropout (p = 0) are left alone."""
    from peft.tuners.lora import LoraLayer

    shared: dict[tuple[str, str], SharedDropout] = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, LoraLayer):
            continue
        parent = name.rpartition(".")[0]
        for adapter, dropout in module.lora_dropout.items():
            if isinstance(dropout, torch.nn.Identity):
                continue
            if (parent, adapter) not in shared:
                shared[parent, adapter] = SharedDropout(dropout)
                modules[parent].register_forward_hook(shared[parent, adapter].forget)
            module.lora_dropout[adapter] = shared[parent, adapter]
    return len(shared)
