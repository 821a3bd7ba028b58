"""The training run's one progress line: the Trainer's logs shown as a bar, not printed as raw dicts."""

from __future__ import annotations

import sys
import time

from transformers import TrainerCallback


class TrainingProgress(TrainerCallback):
    """A tqdm bar over optimizer steps whose postfix carries the latest train loss, validation loss and
    tokens/s; it says "validating" while the validation loss is computed. Replaces transformers'
    ProgressCallback, which writes every log as a Python dict."""

    def __init__(self, file=None):
        self.file = file or sys.stderr
        self.bar = None
        self.postfix: dict[str, str] = {}
        self._start = None  # (time, tokens seen) when this process started training

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from tqdm import tqdm

        # smoothing=0: the remaining time from the average step so far. tqdm's moving average let one
        # validation pass (tens of seconds) inflate it for many steps after: 14 min shown, 8.7 left.
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                        file=self.file, dynamic_ncols=True, smoothing=0)
        self._start = (time.perf_counter(), state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        seconds = time.perf_counter() - self._start[0]
        if seconds > 0:
            self.postfix["tokens/s"] = f"{(state.num_input_tokens_seen - self._start[1]) / seconds:.0f}"
        if control.should_evaluate:
            self.bar.set_description("validating")
        self.bar.set_postfix(self.postfix, refresh=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.postfix["loss"] = f"{logs['loss']:.4f}"
        if "eval_loss" in logs:
            self.postfix["val loss"] = f"{logs['eval_loss']:.4f}"
            self.bar.set_description("training")
        self.bar.set_postfix(self.postfix, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
