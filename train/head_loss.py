"""The LM head and its cross-entropy in one pass over chunks of answer positions.

transformers computes the logits of every kept position at once (8 rows x ~160 positions x 49,152
for SmolLM2, prompt and padding positions included), upcasts them to float32 and runs log-softmax
and its backward over the whole block: tensors of 230 MB each, written and read several times a
step. Here the head runs on labelled positions only, a chunk of rows at a time, and each chunk's
gradient (softmax minus the one-hot target) is turned into the hidden states' gradient at once, so
no logits outlive their chunk. The arithmetic is transformers' own: logits in the compute dtype,
cross-entropy in float32, the same reduction (a test checks loss and gradient against it).
The head's weight is frozen (it is the tied embedding), so only the hidden states get a gradient.
"""

from __future__ import annotations

import torch

from train.trainer import IGNORE

CHUNK_VALUES = 2**22  # logits per chunk (16 MB in float32): 85 rows of SmolLM2's vocabulary


class PassThroughHead(torch.nn.Module):
    """Stands in for the model's lm_head: returns the hidden states, which the loss turns into logits
    chunk by chunk (`head_cross_entropy`). It keeps the original head, and so the tied weight."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.head = head

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def fuse_head_and_loss(causal_lm) -> None:
    """Make `causal_lm` (a transformers *ForCausalLM, below any peft wrapper) compute its training loss
    with `head_cross_entropy`. Its `logits` output then holds the kept positions' hidden states; the
    Trainer reads only the loss (prediction_loss_only)."""
    if isinstance(causal_lm.lm_head, PassThroughHead):
        return
    if causal_lm.lm_head.weight.requires_grad or getattr(causal_lm.lm_head, "bias", None) is not None:
        raise ValueError("the fused head needs a frozen LM head without a bias")
    causal_lm.lm_head = PassThroughHead(causal_lm.lm_head)
    weight = causal_lm.lm_head.weight

    def loss_function(logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=IGNORE,
                      shift_labels=None, **kwargs):
        return head_cross_entropy(logits, weight, labels, num_items_in_batch, ignore_index, shift_labels)

    causal_lm.loss_function = loss_function


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                       num_items_in_batch=None, ignore_index: int = IGNORE,
                       shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' ForCausalLMLoss of `hidden @ weight.T` (position p predicts label p + 1; a sum over
    `num_items_in_batch` where given, else the mean), without the logits."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden.device)
    keep = targets != ignore_index
    rows = hidden.reshape(-1, hidden.shape[-1])[keep]
    device = hidden.device.type
    # The dtype the head's product computes in: autocast's where it is on (bf16 training), else the weight's.
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    if torch.is_tensor(count):
        count = count.to(hidden.device)
    return _HeadCrossEntropy.apply(rows.to(dtype), weight, targets[keep]) / count


class _HeadCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `rows @ weight.T` against `targets`; the gradient for `rows` is computed
    in the forward pass, chunk by chunk, and only scaled in the backward one."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(rows.device.type, enabled=False):
            w = weight.to(rows.dtype)
            total = torch.zeros((), dtype=torch.float32, device=rows.device)
            # float32, so the backward's scaling (1 / the number of targets) is not rounded to bf16
            grad = torch.empty_like(rows, dtype=torch.float32) if ctx.needs_input_grad[0] else None
            step = max(1, CHUNK_VALUES // w.shape[0])
            for start in range(0, rows.shape[0], step):
                target = targets[start:start + step]
                logits = (rows[start:start + step] @ w.T).float()
                lse = torch.logsumexp(logits, -1)
                total += (lse - logits.gather(1, target[:, None]).squeeze(1)).sum()
                if grad is not None:
                    probs = logits.sub_(lse[:, None]).exp_()
                    probs[torch.arange(len(target), device=rows.device), target] -= 1
                    grad[start:start + step] = probs.to(rows.dtype) @ w
        ctx.save_for_backward(grad)
        ctx.dtype = rows.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.dtype), None, None
