"""The training log: one JSON line per logged step or evaluation, written as the trainer runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class JsonlLogCallback(TrainerCallback):
    """Appends {step, train_loss, val_loss, learning_rate, tokens_per_second} rows as the trainer logs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._last = None  # (time, tokens) at the previous training log

    def on_step_end(self, args, state, control, **kwargs):
        # Always evaluate (and checkpoint) at the last step, so the final validation loss is logged.
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        self._last = None  # the next rate must not count the evaluation's time

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            rate = None
            if self._last is not None and now > self._last[0]:
                rate = round((tokens - self._last[1]) / (now - self._last[0]), 1)
            self._last = (now, tokens)
            row.update(train_loss=logs["loss"], learning_rate=logs.get("learning_rate"), tokens_per_second=rate)
        elif "eval_loss" in logs:
            row.update(val_loss=logs["eval_loss"])
        else:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
