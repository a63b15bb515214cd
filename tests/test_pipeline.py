"""The staged pipeline: order, early stop, errors from any stage, and thread clean-up."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import numpy as np
import pytest

from edged.errors import SourceError
from edged.inference.detector import Detector
from edged.pipeline import Pipeline, in_background
from edged.sources import Frame
from tests.conftest import DEMO_MODEL


def test_in_background_keeps_order_and_finishes() -> None:
    assert list(in_background(iter(range(100)), "test", depth=3)) == list(range(100))


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
    stream = in_background(endless(), "test", depth=2)
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
