"""A scripted model that takes its time over each piece of an answer, for tests of streams that end early."""

from __future__ import annotations

import threading
import time

from harness.models import FakeBackend


class Paced(FakeBackend):
    """A scripted model that takes a while over each piece of an answer, as decoding steps do. It records
    what its listener answered after each piece (True: stop that note) and the generations it returned."""

    def __init__(self, outputs, pieces=20, seconds=0.01, first_s=0.0):
        super().__init__(outputs, pieces=pieces)
        self.seconds, self.first_s = seconds, first_s
        self.told: list[tuple[str, bool]] = []
        self.generations = {}
        self.finished = threading.Event()

    def generate(self, notes, settings, listener=None):
        def paced(i, text):
            time.sleep(self.seconds)
            stop = bool(listener(i, text))
            self.told.append((notes[i], stop))
            return stop

        time.sleep(self.first_s)
        out = super().generate(notes, settings, paced if listener else None)
        self.generations.update(zip(notes, out, strict=True))
        self.finished.set()
        return out
