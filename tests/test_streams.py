"""Stream readers on real video files: hand-off policies, max_fps, loops, failures and backoff, stop."""

from __future__ import annotations

import os
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

import edged.streams
from edged.errors import SourceError
from edged.sources import FrameSource, open_source
from edged.streams import StreamReader, backoff_delays
from edged.synthetic import write_clip

FRAMES = 30  # at 30 fps: one second
FAST = {"backoff_initial_s": 0.02, "backoff_max_s": 0.08}


def make_clip(path: Path, seed: int = 11) -> Path:
    return write_clip(path, seed=seed, frames=FRAMES, fps=30.0, width=320, height=240, shapes=3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("streams") / "clip.mp4")


class Events(list):
    """An ``on_state`` listener that keeps (stream, state, detail)."""

    def __call__(self, stream: str, state: str, detail: str) -> None:
        self.append((stream, state, detail))

    def states(self, stream: str) -> list[str]:
        return [state for name, state, _ in self if name == stream]


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def reader(events: Events) -> Iterator[Callable[..., StreamReader]]:
    """Makes started readers reporting to ``events``; stops them all at the end."""
    made: list[StreamReader] = []

    def make(name: str, spec: str | Path, **options: object) -> StreamReader:
        made.append(StreamReader(name, str(spec), on_state=events, **options))  # type: ignore[arg-type]
        made[-1].start()
        return made[-1]

    yield make
    for r in made:
        r.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def thread_gone(name: str) -> bool:
    return wait_for(lambda: all(t.name != f"stream-{name}" for t in threading.enumerate()), 5)


def test_defaults_follow_the_contract(clip: Path) -> None:
    for spec, realtime in [(0, True), ("/dev/video2", True), ("rtsp://cam/1", True), (str(clip), False),
                           ("videotestsrc ! videoconvert ! appsink", True), ("still.png", False)]:
        r = StreamReader("s", spec)
        assert r.realtime is realtime and r.state == "starting", spec
        assert (r.backoff_initial_s, r.backoff_max_s, r.stall_s) == (1.0, 5.0, 5.0)
    assert list(islice(backoff_delays(1.0, 5.0), 6)) == [1, 2, 4, 5, 5, 5]
    with pytest.raises(ValueError, match="max_fps"):
        StreamReader("s", str(clip), max_fps=0)


def test_a_file_hands_over_every_frame_in_order_then_ends(reader, events: Events, clip: Path) -> None:
    r = reader("file", clip)
    got = list(r.frames())
    assert [f.frame_id for f in got] == list(range(FRAMES))
    with open_source(str(clip)) as direct:
        assert all(np.array_equal(f.image, d.image) for f, d in zip(got, direct, strict=True))
    stamps = [f.ts_capture for f in got]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 60
    assert events.states("file") == ["up", "down"] and events[-1][2] == "end of file"
    assert r.stats() | {"fps_in": 0, "fps_out": 0} == {"state": "down", "fps_in": 0, "fps_out": 0,
                                                         "frames_in": FRAMES, "frames_out": FRAMES, "frames_dropped": 0}
    assert r.fps_in > 0 and r.fps_out > 0


def test_loop_starts_again_and_frame_id_keeps_counting(reader, events: Events, clip: Path) -> None:
    r = reader("loop", clip, loop=True)
    got = list(islice(r.frames(), 2 * FRAMES + 15))
    assert [f.frame_id for f in got] == list(range(2 * FRAMES + 15))
    assert np.array_equal(got[FRAMES].image, got[0].image) and np.array_equal(got[2 * FRAMES + 7].image, got[7].image)
    assert events.states("loop") == ["up"] and r.dropped == 0


@pytest.mark.parametrize("max_fps, step", [(10, 3), (15, 2)])
def test_max_fps_on_a_file_keeps_frames_by_its_timeline(reader, clip: Path, max_fps: float, step: int) -> None:
    r = reader("capped", clip, max_fps=max_fps)
    assert [f.frame_id for f in r.frames()] == list(range(0, FRAMES, step))
    assert (r.frames_in, r.frames_out, r.dropped) == (FRAMES, FRAMES // step, FRAMES - FRAMES // step)


def test_max_fps_can_change_while_running(reader, clip: Path) -> None:
    r = reader("governed", clip)
    frames = r.frames()
    got = [next(frames).frame_id for _ in range(6)]
    r.max_fps = 10  # the reader is at most a queue (and one frame) ahead
    got += [f.frame_id for f in frames]
    assert got[:6] == list(range(6)) and got[-1] >= FRAMES - 3
    assert np.diff(got[-4:]).tolist() == [3, 3, 3] and r.dropped == FRAMES - len(got)


def test_realtime_with_a_slow_consumer_drops_stale_frames_and_hands_over_the_newest(reader, clip: Path) -> None:
    started = time.monotonic()
    r = reader("live", clip, realtime=True)
    got = []
    for frame in r.frames():
        got.append(frame.frame_id)
        time.sleep(0.1)  # three frames' time at 30 fps
    assert time.monotonic() - started > 0.8  # a realtime file plays at its own rate
    assert got == sorted(set(got)) and got[-1] == FRAMES - 1  # never older, and the newest is the last
    assert 1 < len(got) < FRAMES // 2
    assert (r.frames_in, r.frames_out, r.dropped) == (FRAMES, len(got), FRAMES - len(got))


def test_a_file_that_appears_after_start_goes_down_then_up(reader, events: Events, tmp_path: Path) -> None:
    path = tmp_path / "late.mp4"
    r = reader("late", path, **FAST)
    assert wait_for(lambda: r.state == "down")
    assert events[0][:2] == ("late", "down") and "not found" in events[0][2]
    os.replace(make_clip(tmp_path / "staging" / "late.mp4"), path)  # whole, at once
    assert [f.frame_id for f in r.frames()] == list(range(FRAMES))
    assert events.states("late") == ["down", "up", "down"]


def test_shedding_memory_keeps_a_file_one_frame_ahead(reader, clip: Path) -> None:
    """Unconsumed, a file reader decodes FILE_QUEUE_DEPTH frames ahead (and holds one more in hand); under
    memory pressure one; frames() still hands over every frame, in order."""
    r = reader("file", clip)
    assert wait_for(lambda: r.frames_in == edged.streams.FILE_QUEUE_DEPTH + 1)
    frames = r.frames()
    r.shed_memory(True)
    first = [next(frames).frame_id for _ in range(edged.streams.FILE_QUEUE_DEPTH + 1)]
    assert wait_for(lambda: r.frames_in == len(first) + 2)
    time.sleep(0.2)
    assert r.frames_in == len(first) + 2  # one queued, one in hand: no further
    r.shed_memory(False)
    assert first + [f.frame_id for f in frames] == list(range(FRAMES))


def test_a_source_that_comes_back_is_reopened_at_once_not_at_the_end_of_the_backoff(
        reader, events: Events, tmp_path: Path) -> None:
    """While it waits to retry, the reader probes the source (here: does the file exist?)."""
    path = tmp_path / "back.mp4"
    r = reader("back", path, backoff_initial_s=30.0)
    assert wait_for(lambda: r.state == "down")
    os.replace(make_clip(tmp_path / "staging" / "back.mp4"), path)
    returned = time.monotonic()
    assert wait_for(lambda: r.state == "up", 5)
    assert time.monotonic() - returned < 2, "reopened only at the end of the 30 s backoff"


def test_an_unreadable_file_is_down_once_and_retried_with_backoff(reader, events: Events, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    tries: list[float] = []

    def counting_open(spec: str, **timeouts: float) -> FrameSource:
        tries.append(time.monotonic())
        return open_source(spec, **timeouts)

    monkeypatch.setattr(edged.streams, "open_source", counting_open)
    r = reader("bad", bad, **FAST)
    assert wait_for(lambda: len(tries) >= 6)
    assert events == [("bad", "down", f"{bad}: not a video OpenCV can decode")] and r.state == "down"
    gaps = np.diff(tries[:6])
    assert (gaps >= np.array([0.02, 0.04, 0.08, 0.08, 0.08]) * 0.9).all(), gaps


def test_credentials_stay_out_of_events(reader, events: Events, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(spec: str, **timeouts: float) -> FrameSource:
        raise SourceError(f"{spec}: cannot open the stream")

    monkeypatch.setattr(edged.streams, "open_source", refuse)
    r = reader("cam", "rtsp://admin:s3cret@10.0.0.9:554/live", **FAST)
    assert wait_for(lambda: r.state == "down")
    assert events == [("cam", "down", "rtsp://***@10.0.0.9:554/live: cannot open the stream")]


def test_stop_ends_frames_and_joins_the_thread(reader, clip: Path) -> None:
    r = reader("endless", clip, realtime=True, loop=True)
    seen: list[int] = []
    consumer = threading.Thread(target=lambda: seen.extend(f.frame_id for f in r.frames()))
    consumer.start()
    assert wait_for(lambda: len(seen) >= 5)
    r.stop()
    consumer.join(5)
    assert not consumer.is_alive() and thread_gone("endless") and r.state == "stopped"


def test_stop_cuts_a_backoff_wait_short(reader, tmp_path: Path) -> None:
    r = reader("waiting", tmp_path / "missing.mp4", backoff_initial_s=30.0)
    consumer = threading.Thread(target=lambda: list(r.frames()))
    consumer.start()
    assert wait_for(lambda: r.state == "down")
    started = time.monotonic()
    r.stop()
    consumer.join(5)
    assert time.monotonic() - started < 3 and not consumer.is_alive() and thread_gone("waiting")


def test_a_broken_stream_leaves_the_others_running(reader, events: Events, clip: Path, tmp_path: Path) -> None:
    broken = reader("broken", tmp_path / "gone.mp4", **FAST)
    good = reader("good", clip)
    assert [f.frame_id for f in good.frames()] == list(range(FRAMES))
    assert broken.state == "down" and events.states("broken") == ["down"]
    assert events.states("good") == ["up", "down"] and good.dropped == 0
