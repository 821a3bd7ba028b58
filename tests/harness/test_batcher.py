"""The batcher in front of a served model: a streamed answer whose reader has gone stops being decoded."""

import asyncio
import time

from harness.batcher import Batcher, growing
from harness.models import GenerationSettings
from tests.fakes.paced import Paced

SETTINGS = GenerationSettings()


def test_a_reader_that_leaves_stops_its_answer_and_not_the_others():
    backend = Paced({"a": "A" * 200, "b": "B" * 200})
    batcher = Batcher(backend, window_s=0.2)

    async def read(note, pieces=None):
        answers = growing(batcher, note, SETTINGS)
        got = []
        async for item in answers:
            got.append(item)
            if pieces is not None and len(got) == pieces:
                await answers.aclose()  # the client closed its stream
                break
        return got

    async def both():
        return await asyncio.gather(read("a", pieces=3), read("b"))

    left, stayed = asyncio.run(both())
    assert backend.finished.wait(5) and batcher.batches == [2]  # one batch for both
    told_a = [stop for note, stop in backend.told if note == "a"]
    assert True in told_a and len(told_a) < 20  # told to stop, it gave no further pieces
    assert not backend.generations["a"].stopped and len(backend.generations["a"].text) < 200
    assert len(left) == 3
    assert stayed[-1].text == "B" * 200 and stayed[-1].stopped and not any(s for n, s in backend.told if n == "b")


def test_a_request_whose_reader_left_before_its_batch_started_is_never_run():
    backend = Paced({"busy": "x" * 20, "late": "y" * 20}, first_s=0.5)
    batcher = Batcher(backend, window_s=0.0)

    async def scenario():
        first = asyncio.ensure_future(asyncio.to_thread(batcher.generate, "busy", SETTINGS))
        await asyncio.sleep(0.1)  # the first batch runs
        late = growing(batcher, "late", SETTINGS)
        waiting = asyncio.ensure_future(late.__anext__())
        await asyncio.sleep(0.1)
        waiting.cancel()  # its reader left while it waited behind the batch
        await asyncio.gather(waiting, return_exceptions=True)
        await late.aclose()
        return await first

    assert asyncio.run(scenario()).text == "x" * 20
    time.sleep(0.3)  # time for the worker to have picked the late request, had it kept it
    assert backend.calls == [["busy"]] and batcher.batches == [1]
