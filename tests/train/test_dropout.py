"""BitsDropout: the dropout torch's nn.Dropout does, from cheaper random numbers; SharedDropout: one mask
for the LoRA layers that read the same input."""

import pytest
import torch

from train.dropout import BitsDropout, SharedDropout, share_dropout_masks, use_bits_dropout


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


def test_bf16_values_and_gradients_are_those_of_the_mask_product_to_the_bit():
    """What the LoRA layers compute under bf16 autocast: x times the keep mask times the scale, forward and
    backward, rounded as that product rounds (the cheaper passes change no bit)."""
    torch.manual_seed(2)
    x = torch.randn(4, 33, 576, dtype=torch.bfloat16, requires_grad=True)
    out = BitsDropout(0.05).train()(x)
    keep = out != 0  # randn draws no exact zeros
    assert out.dtype == torch.bfloat16 and 0.04 < 1 - keep.float().mean().item() < 0.06
    assert torch.equal(out, x.detach() * keep * (1 / 0.95))
    grad = torch.randn_like(out)
    out.backward(grad)
    assert torch.equal(x.grad, grad * (1 / 0.95) * keep)


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


class Attention(torch.nn.Module):
    """q, k and v read the block's input; o reads what they make of it, as in a Llama attention block."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        return self.o_proj(self.q_proj(x) * self.k_proj(x) + self.v_proj(x))


class Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = Attention(), Attention()

    def forward(self, x):
        return self.second(self.first(x))


def lora_stack(dropout=0.3):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(Stack(), LoraConfig(r=2, lora_alpha=4, lora_dropout=dropout, init_lora_weights=False,
                                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))


def lora_inputs(model, x):
    """The tensor each LoRA layer's A matrix read, by layer name, from one training forward pass."""
    seen, hooks = {}, []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            hooks.append(module.register_forward_hook(
                lambda _, args, __, name=name: seen.__setitem__(name.split("model.")[-1][:-15], args[0])))
    model(x)
    for hook in hooks:
        hook.remove()
    return seen


def test_layers_reading_one_input_share_one_mask_and_the_others_draw_their_own():
    model = lora_stack()
    use_bits_dropout(model)
    assert share_dropout_masks(model) == 2  # one per attention block
    model.train()
    torch.manual_seed(0)
    x = torch.ones(64, 8)
    seen = lora_inputs(model, x)
    for block in ("first", "second"):
        q, k, v, o = (seen[f"{block}.{p}_proj"] for p in "qkvo")
        assert k is q and v is q  # one mask for the three, as LoRA on a fused qkv linear
        assert o is not q
    first = seen["first.q_proj"]
    assert 0 < (first == 0).float().mean() < 1  # it drops some values, not all
    assert seen["second.q_proj"] is not first  # each block its own
    # Nothing outlives the block's forward.
    assert all(m._last is None for m in model.modules() if isinstance(m, SharedDropout))


def test_the_shared_mask_takes_the_summed_gradient_once():
    torch.manual_seed(2)
    shared = SharedDropout(BitsDropout(0.3)).train()
    x = torch.randn(16, 32, requires_grad=True)
    a, b = torch.randn(16, 32), torch.randn(16, 32)
    first, second = shared(x), shared(x)
    assert second is first
    ((first * a).sum() + (second * b).sum()).backward()
    assert torch.allclose(x.grad, (a + b) * (first != 0) / 0.7)


def test_an_input_changed_in_place_gets_a_new_mask():
    torch.manual_seed(3)
    shared = SharedDropout(BitsDropout(0.5)).train()
    x = torch.ones(100, 100)
    first = shared(x)
    x.mul_(2)
    assert shared(x) is not first


def test_evaluation_drops_nothing_and_keeps_nothing():
    model = lora_stack()
    share_dropout_masks(model)
    model.eval()
    x = torch.randn(4, 8)
    seen = lora_inputs(model, x)
    assert seen["first.q_proj"] is x and seen["first.k_proj"] is x


def test_layers_without_dropout_are_left_alone():
    model = lora_stack(dropout=0.0)
    assert share_dropout_masks(model) == 0
    assert not any(isinstance(m, SharedDropout) for m in model.modules())
