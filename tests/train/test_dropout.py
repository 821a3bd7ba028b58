"""BitsDropout: the dropout torch's nn.Dropout does, from cheaper random numbers."""

import pytest
import torch

from train.dropout import BitsDropout, use_bits_dropout


def test_drops_p_of_the_values_and_scales_what_it_keeps():
    torch.manual_seed(0)
    x = torch.ones(1000, 1003)  # not a multiple of 4: the last 64-bit draw is used in part
    out = BitsDropout(0.05).train()(x)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(0.05, abs=0.002)  # about 1e6 values: the standard error is 2e-4
    assert torch.all((out == 0) | torch.isclose(out, torch.tensor(1 / 0.95)))
    # Each 16-bit quarter of a draw is uniform, the top one too: none of them drops more or less.
    per_quarter = (out.flatten()[:1000 * 1000].view(-1, 4) == 0).float().mean(0)
    assert torch.allclose(per_quarter, torch.full((4,), 0.05), atol=0.003)


def test_the_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(8, 30, 16, requires_grad=True)
    out = BitsDropout(0.3).train()(x)
    out.sum().backward()
    assert torch.equal(x.grad, (out != 0).float() / 0.7)


def test_identity_in_eval_mode_or_at_p_zero():
    x = torch.randn(4, 5)
    assert BitsDropout(0.5).eval()(x) is x
    assert BitsDropout(0.0).train()(x) is x


def test_seeded_masks_repeat():
    x = torch.ones(64, 64)
    masks = []
    for _ in range(2):
        torch.manual_seed(7)
        masks.append(BitsDropout(0.1).train()(x))
    assert torch.equal(*masks)


def test_replaces_every_lora_dropout():
    from peft import LoraConfig, get_peft_model

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.v_proj, self.out = (torch.nn.Linear(8, 8) for _ in range(3))

        def forward(self, x):
            return self.out(self.q_proj(x) + self.v_proj(x))

    model = get_peft_model(Block(), LoraConfig(r=2, lora_alpha=4, lora_dropout=0.05,
                                               target_modules=["q_proj", "v_proj"]))
    assert use_bits_dropout(model) == 2
    dropouts = [m for m in model.modules() if isinstance(m, (torch.nn.Dropout, BitsDropout))]
    assert len(dropouts) == 2 and all(isinstance(m, BitsDropout) and m.p == 0.05 for m in dropouts)
    model.train()
    model(torch.randn(3, 8)).sum().backward()  # trains through it
