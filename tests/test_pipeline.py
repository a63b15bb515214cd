"""The staged pipeline: order, early stop, errors from any stage, and thread clean-up."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import numpy as np
import pytest

from edged.errors import SourceError
from edged.inference.detector import Detector
from edged.handoff import Handoff
from edged.pipeline import STAGE_DEPTH, Pipeline, in_background
from edged.sources import Frame
from tests.conftest import DEMO_MODEL


def test_in_background_keeps_order_and_finishes() -> None:
    assert list(in_background(iter(range(100)), "test", Handoff(3))) == list(range(100))


def test_in_background_raises_the_producers_error_after_its_items() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise SourceError("camera gone")

    seen = []
    with pytest.raises(SourceError, match="camera gone"):
        for item in in_background(produce(), "test"):
            seen.append(item)
    assert seen == [1, 2]


def test_closing_early_stops_the_producer_and_closes_its_source() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    before = threading.active_count()
    stream = in_background(endless(), "test", Handoff(2))
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed.wait(5)
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


class Collect:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.closed = False

    def write(self, message, frame, result) -> None:  # noqa: ANN001
        self.messages.append(message)

    def close(self) -> None:
        self.closed = True


def frames(count: int, fail_at: int | None = None) -> Iterator[Frame]:
    rng = np.random.default_rng(0)
    for i in range(count):
        if i == fail_at:
            raise SourceError("stream cut")
        yield Frame(i, rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), time.time())


@pytest.mark.parametrize("overlap", [True, False])
def test_pipeline_runs_stages_in_order_with_max_frames(overlap: bool) -> None:
    sink = Collect()
    stats = Pipeline(Detector(DEMO_MODEL, providers=["cpu"]), "s", [sink], "dev").run(frames(50), max_frames=7,
                                                                                      overlap=overlap)
    assert stats.frames == 7 and sink.closed
    assert [m["frame_id"] for m in sink.messages] == list(range(7))
    assert [m["seq"] for m in sink.messages] == list(range(7))
    for m in sink.messages:
        assert m["image"] == {"width": 320, "height": 240}
        assert min(m["latency_ms"][k] for k in ("preprocess", "inference", "postprocess")) > 0


@pytest.mark.parametrize("overlap", [True, False])
def test_pipeline_reports_a_source_failure_after_publishing_what_came_before(overlap: bool) -> None:
    sink = Collect()
    with pytest.raises(SourceError, match="stream cut"):
        Pipeline(Detector(DEMO_MODEL, providers=["cpu"]), "s", [sink], "dev").run(frames(10, fail_at=4),
                                                                                  overlap=overlap)
    assert [m["frame_id"] for m in sink.messages] == [0, 1, 2, 3] and sink.closed


class Blocking(Collect):
    """A sink that holds the first message until released: the stages fill up behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, message, frame, result) -> None:  # noqa: ANN001
        self.release.wait(10)
        super().write(message, frame, result)


def frames_read_ahead(pipeline: Pipeline, sink: Blocking, shedding: list[bool]) -> list[int]:
    """How many frames the pipeline has taken from its source while the sink holds the first message,
    once it stops taking more; ``shedding`` lists the states to measure in, in order."""
    taken = 0

    def counted() -> Iterator[Frame]:
        nonlocal taken
        for frame in frames(60):
            taken += 1
            yield frame

    def settled() -> int:
        last, deadline = -1, time.monotonic() + 10
        while taken != last and time.monotonic() < deadline:
            last = taken
            time.sleep(0.3)
        return taken

    runner = threading.Thread(target=pipeline.run, args=(counted(),))
    seen = []
    for index, state in enumerate(shedding):
        pipeline.shed_memory(state)
        if index == 0:
            runner.start()
        seen.append(settled())
    sink.release.set()
    runner.join(10)
    assert [m["frame_id"] for m in sink.messages] == list(range(60))  # every frame, in order, shedding or not
    return seen


def test_shedding_memory_keeps_each_stage_one_frame_ahead() -> None:
    """Behind a blocked publish, each of the two overlapped stages holds its queue plus the frame in its hand:
    2 * (STAGE_DEPTH + 1) + 1 frames in all; 2 * (1 + 1) + 1 while memory is shed. Growing back takes effect
    at once."""
    detector = Detector(DEMO_MODEL, providers=["cpu"])
    sink = Blocking()
    assert frames_read_ahead(Pipeline(detector, "s", [sink], "dev"), sink, [False]) == [2 * (STAGE_DEPTH + 1) + 1]
    sink = Blocking()
    assert frames_read_ahead(Pipeline(detector, "s", [sink], "dev"), sink, [True, False]) == [
        5, 2 * (STAGE_DEPTH + 1) + 1]
