"""``edged replay`` (issue 17): recordings made by the daemon's own recording path (a pipeline with the live
view's sink, recording to MCAP) on a rendered clip, replayed through the same and other thresholds, and files
that are not whole recordings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import foxglove
import pytest
from foxglove import Context
from foxglove.messages import CompressedImage

from edged import foxglove_messages
from edged.cli import main
from edged.config import FoxgloveSettings
from edged.demo import demo_model_path
from edged.foxglove_messages import StreamChannels, health_channel, image_message, json_bytes, nanoseconds
from edged.inference.detector import Detector
from edged.inference.session import SessionConfig
from edged.live_view import LiveView
from edged.pipeline import Pipeline
from edged.recording import Recorder, recordings
from edged.sinks import JsonLinesSink
from edged.sources import Frame, open_source
from edged.synthetic import write_clip
from tests.conftest import run_edged

STREAM = "front"


def record(folder: Path, clip: Path, image_format: str, quality: int = 90) -> tuple[Path, list[dict[str, Any]]]:
    """The clip through the demo detector with the live view's sink recording (every frame: max_fps above the
    clip's); the recording, and the detections messages the pipeline published."""
    settings = FoxgloveSettings.model_validate({"mcap": {"enabled": True, "dir": str(folder)}, "max_fps": 120,
                                                "image_format": image_format, "jpeg_quality": quality})
    view = LiveView(settings, "dev")
    assert view.start() == []
    published = folder / "published.jsonl"
    detector = Detector(demo_model_path(), SessionConfig(providers=("cpu",)))
    with published.open("w") as out, open_source(str(clip)) as source:
        # Not overlapped, as the daemon runs a live stream: the encoder takes each frame before the next comes.
        Pipeline(detector, STREAM, [JsonLinesSink(out), view.sink(STREAM)], "dev").run(source, overlap=False)
    view.stop()
    (path,) = recordings(folder)
    return path, [json.loads(line) for line in published.read_text().splitlines()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("replay") / "clip.mp4", seed=41, frames=16, width=320, height=240)


@pytest.fixture(scope="module")
def png_recording(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    return record(tmp_path_factory.mktemp("png"), clip, "png")


def compare(recording: Path, tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "compare.json"
    assert main(["replay", str(recording), "--compare", "--compare-json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_a_lossless_recording_replays_to_identical_detections(png_recording: tuple[Path, list[dict[str, Any]]],
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    path, published = png_recording
    out = tmp_path / "replayed.jsonl"
    assert main(["replay", str(path), "--out", str(out)]) == 0
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [m["ts_capture"] for m in replayed] == [m["ts_capture"] for m in published]
    assert [m["frame_id"] for m in replayed] == [m["frame_id"] for m in published]
    assert [m["detections"] for m in replayed] == [m["detections"] for m in published]
    assert sum(len(m["detections"]) for m in published) >= 40

    result = compare(path, tmp_path)
    total = result["total"]
    assert (total["matched"], total["new"], total["lost"]) == (total["recorded"], 0, 0)
    assert total["matched_share"] == 1.0 and result["map50"] == 1.0 and result["frames"] == len(published)
    table = capsys.readouterr().out
    print(table)
    assert "100.0" in table.splitlines()[-2] and "mAP@0.5 of the new against the recorded: 1.0000" in table


def test_a_jpeg_recording_matches_at_iou_one_half(clip: Path, tmp_path: Path) -> None:
    path, published = record(tmp_path / "rec", clip, "jpeg", quality=90)
    result = compare(path, tmp_path)
    print(json.dumps(result["total"]), result["map50"])
    assert result["frames"] == len(published)
    assert result["total"]["matched_share"] == 1.0 and result["total"]["lost"] == 0  # JPEG moves boxes a little


def test_other_thresholds_lose_detections_and_the_counts_add_up(png_recording: tuple[Path, list[dict[str, Any]]],
                                                                tmp_path: Path) -> None:
    path, published = png_recording
    result = compare(path, tmp_path, "--conf", "0.97")
    total = result["total"]
    assert total["lost"] > 0 and total["new"] == 0 and result["map50"] < 1.0
    recorded = sum(len(m["detections"]) for m in published)
    assert total["recorded"] == recorded == total["matched"] + total["lost"]
    for key in ("recorded", "matched", "new", "lost"):
        assert sum(c[key] for c in result["classes"].values()) == total[key]
    labels = {d["label"] for m in published for d in m["detections"]}
    assert set(result["classes"]) == labels


def test_as_a_real_process(png_recording: tuple[Path, list[dict[str, Any]]]) -> None:
    path, published = png_recording
    result = run_edged("replay", path, "--compare", "--stream", STREAM)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"{len(published)} frames (0 without recorded detections)")


def test_files_that_are_not_whole_recordings(png_recording: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = png_recording

    def refused(file: Path, *extra: str) -> str:
        assert main(["replay", str(file), *extra]) == 2
        return capsys.readouterr().err

    missing = tmp_path / "missing.mcap"
    assert f"{missing}: cannot read" in refused(missing)
    text = tmp_path / "notes.mcap"
    text.write_text("not a recording\n")
    assert f"{text}: not an MCAP file" in refused(text)
    cut = tmp_path / "cut.mcap"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert f"{cut}: truncated or corrupt MCAP" in refused(cut)
    assert f"{path}: no stream 'rear'; its streams: {STREAM}" in refused(path, "--stream", "rear")

    context = Context()
    health = health_channel(context)
    only_health = tmp_path / "health-only"
    recorder = Recorder(context, only_health, 1, 1, "dev")
    recorder.start()
    health.log(json_bytes({"ts": 1.0}), log_time=nanoseconds(1.0))
    recorder.close()
    (file,) = recordings(only_health)
    assert f"{file}: no image channels" in refused(file) and "/health" in capsys.readouterr().err + refused(file)
    result = run_edged("replay", file)
    assert result.returncode == 2 and f"{file}: no image channels" in result.stderr


def test_an_undecodable_image_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         png_recording: tuple[Path, list[dict[str, Any]]]) -> None:
    context = Context()
    channels = StreamChannels(context, STREAM)
    recorder = Recorder(context, tmp_path, 1, 1, "dev")
    recorder.start()
    good = recordings(png_recording[0].parent)[0]
    from tests.test_live_view import read_recording  # the test reader of recordings

    images = read_recording(good)[f"/{STREAM}/image"][:3]
    for index, (log_time, _, image) in enumerate(images):
        data = b"\xff\xd8 torn" if index == 1 else image.data
        channels.image.log(image_message(STREAM, log_time / 1e9, data, "png"), log_time=log_time)
    recorder.close()
    out = tmp_path / "out.jsonl"
    assert main(["replay", str(recordings(tmp_path)[0]), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert "not a decodable png image: skipped" in capsys.readouterr().err

    # A message that is not a CompressedImage at all (its protobuf does not parse), and one without image data.
    context = Context()
    schema = CompressedImage.get_schema()
    raw = foxglove.Channel(f"/{STREAM}/image", message_encoding="protobuf", context=context,
                           schema=foxglove.Schema(name=schema.name, encoding=schema.encoding, data=schema.data))
    path = tmp_path / "raw.mcap"
    writer = foxglove.open_mcap(path, context=context)
    for index, (log_time, _, image) in enumerate(images):
        data = {1: b"\x0a\xff\xff\xff", 2: b""}.get(index, image.data)
        raw.log(data if index == 1 else image_message(STREAM, log_time / 1e9, data, "png").encode(),
                log_time=log_time)
    writer.close()
    assert main(["replay", str(path), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1
    err = capsys.readouterr().err
    assert f"{path}: /{STREAM}/image at {images[1][0]}: not a CompressedImage" in err
    assert f"{path}: /{STREAM}/image at {images[2][0]}: not a decodable png image: skipped" in err


class Keep:
    """A pipeline sink keeping each frame's image and detections message, as the daemon's recording gets them."""

    def __init__(self) -> None:
        self.frames: list[tuple[Any, dict[str, Any]]] = []

    def write(self, message: dict[str, Any], frame: Frame, result: Any) -> None:
        self.frames.append((frame.image, message))

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def two_streams(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """A recording written with the SDK by hand, as the daemon writes one, from the demo detector's frames and
    messages: stream "front" with an image every frame, stream "rear" (the same frames, a second later) with
    an image every third frame only (as max_fps does); detections every frame, except rear's frame 3 (imaged).
    The file, and the recorded detections messages of the imaged frames by stream (None: not recorded)."""
    detector = Detector(demo_model_path(), SessionConfig(providers=("cpu",)))
    kept = Keep()
    with open_source(str(clip)) as source:
        Pipeline(detector, "front", [kept], "dev").run(source, overlap=False)
    path = tmp_path_factory.mktemp("two") / "two.mcap"
    context = Context()
    writer = foxglove.open_mcap(path, context=context)
    health = health_channel(context)
    imaged: dict[str, list[dict[str, Any]]] = {"front": [], "rear": []}
    for stream, offset, every in (("front", 0.0, 1), ("rear", 1.0, 3)):
        channels = StreamChannels(context, stream)
        for index, (image, message) in enumerate(kept.frames):
            message = {**message, "stream": stream, "ts_capture": message["ts_capture"] + offset}
            ts = message["ts_capture"]
            if index % every == 0:
                data = foxglove_messages.encode_image(image, "png", 0)
                channels.image.log(image_message(stream, ts, data, "png"), log_time=nanoseconds(ts))
                channels.annotations.log(foxglove_messages.annotations_message(ts, message["detections"]),
                                         log_time=nanoseconds(ts))
                imaged[stream].append(message if stream == "front" or index != 3 else None)
            if stream == "front" or index != 3:
                channels.detections.log(json_bytes(message), log_time=nanoseconds(ts))
        health.log(json_bytes({"ts": 1.0}), log_time=nanoseconds(1.0))
    writer.close()
    return path, imaged


def test_every_image_stream_and_only_imaged_frames(two_streams: tuple[Path, dict[str, list[Any]]],
                                                   tmp_path: Path) -> None:
    path, imaged = two_streams
    assert len(imaged["front"]) == 16 and len(imaged["rear"]) == 6
    out = tmp_path / "all.jsonl"
    assert main(["replay", str(path), "--out", str(out), "--compare-json", str(tmp_path / "c.json")]) == 0
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [m["stream"] for m in replayed] == ["front"] * 16 + ["rear"] * 6
    front, rear = replayed[:16], replayed[16:]
    assert [m["detections"] for m in front] == [m["detections"] for m in imaged["front"]]
    assert [m["ts_capture"] for m in front] == [m["ts_capture"] for m in imaged["front"]]
    # The rear's imaged frames are 0, 3, 6...: frame 3 without detections recorded takes the count's id (1).
    assert [m["frame_id"] for m in rear] == [0, 1, 6, 9, 12, 15]
    assert [m["detections"] for m in rear if m["frame_id"] != 1] == [
        m["detections"] for m in imaged["rear"] if m is not None]
    result = json.loads((tmp_path / "c.json").read_text())
    assert (result["frames"], result["frames_without_record"]) == (22, 1)
    total = result["total"]
    assert total["recorded"] == sum(len(m["detections"]) for s in imaged.values() for m in s if m is not None)
    assert (total["matched"], total["new"], total["lost"], result["map50"]) == (total["recorded"], 0, 0, 1.0)

    only = tmp_path / "rear.jsonl"
    assert main(["replay", str(path), "--stream", "rear", "--out", str(only)]) == 0
    alone = [json.loads(line) for line in only.read_text().splitlines()]

    def steady(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:  # without this run's times
        return [{k: v for k, v in m.items() if k not in ("ts", "ts_publish", "latency_ms")} for m in messages]
    assert steady(alone) == steady(rear)


def test_files_cut_anywhere_or_corrupt_inside(png_recording: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = png_recording
    data = path.read_bytes()
    for size in (8, 9, len(data) - 30, len(data) - 1):  # the magic alone, into the footer, its last byte
        cut = tmp_path / f"cut-{size}.mcap"
        cut.write_bytes(data[:size])
        assert main(["replay", str(cut)]) == 2
        err = capsys.readouterr().err
        assert f"{cut}: truncated or corrupt MCAP" in err and "streaming readers" in err, err
        assert "Traceback" not in err
    # A chunk's bytes flipped in the middle: the summary reads, the chunk does not.
    flipped = bytearray(data)
    middle = len(data) // 2
    flipped[middle:middle + 400] = bytes(b ^ 0x5A for b in flipped[middle:middle + 400])
    corrupt = tmp_path / "flipped.mcap"
    corrupt.write_bytes(flipped)
    assert main(["replay", str(corrupt), "--compare"]) == 2
    assert f"{corrupt}: corrupt MCAP, a chunk does not read" in capsys.readouterr().err
    result = run_edged("replay", corrupt, "--compare")
    assert result.returncode == 2 and f"{corrupt}: corrupt MCAP" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors(png_recording: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", str(png_recording[0]), "--match-iou", "1.5"])
    assert exit_info.value.code == 2 and "--match-iou" in capsys.readouterr().err
    nowhere = tmp_path / "missing-folder" / "out.jsonl"
    assert main(["replay", str(png_recording[0]), "--out", str(nowhere)]) == 2
    assert f"{nowhere}: cannot write" in capsys.readouterr().err
