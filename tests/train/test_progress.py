"""The training progress bar: one line, and a remaining time that a validation pass does not distort."""

import io
from types import SimpleNamespace

import pytest

from train.progress import TrainingProgress


def test_remaining_time_is_the_average_step_not_the_last_validation(monkeypatch):
    """171 steps of 4 s with a 30 s validation after step 57: at step 60 the bar should expect the
    average step so far for the rest, not the validation's pace."""
    import tqdm.std

    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    out = io.StringIO()
    progress = TrainingProgress(file=out)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=171, global_step=0, num_input_tokens_seen=0)
    progress.on_train_begin(None, state, None)
    for step in range(1, 61):
        clock[0] += 4.0 + (30.0 if step == 58 else 0.0)  # the validation at step 57 delays step 58
        state.global_step, state.num_input_tokens_seen = step, step * 1500
        progress.on_step_end(None, state, SimpleNamespace(should_evaluate=False))
    info = progress.bar.format_dict
    rate = info["rate"] or (info["n"] - info["initial"]) / info["elapsed"]
    remaining = (171 - 60) / rate
    assert remaining == pytest.approx(111 * (60 * 4 + 30) / 60, rel=0.02)
    progress.on_train_end(None, state, None)
    assert "training" in out.getvalue() and "{" not in out.getvalue()  # a bar, not the Trainer's dicts
