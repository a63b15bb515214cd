"""The ``edged`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

from edged import __version__
from edged.demo import demo_model_path
from edged.config import ConfigError, MqttSettings, validate
from edged.errors import EdgedError, InputError, ModelError
from edged.inference.detector import Detector, read_model_info
from edged.inference.session import PRECISIONS, PROVIDERS, SessionConfig
from edged.logs import setup_logging
from edged.signals import SignalLatch

log = logging.getLogger("edged.cli")

EXIT_ERROR = 1
EXIT_CONFIG = 2  # the contract's exit code for an invalid config (and an input file a command cannot read)
SENSORS_CPU_WINDOW_S = 0.5
TRACK_LOW = 0.1  # edged detect --track: ByteTrack's second-stage score, as tracking.low defaults to


def _input_size(text: str) -> int | tuple[int, int]:
    """``416`` or ``480x640`` (height x width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the bundled demo detector)")
    parser.add_argument("--conf", type=float, default=0.4, help="confidence threshold (default 0.4)")
    parser.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold (default 0.5)")
    parser.add_argument("--providers", nargs="+", choices=list(PROVIDERS), default=list(PROVIDERS),
                        metavar="PROVIDER", help=f"preference order among {', '.join(PROVIDERS)} (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: automatic)")
    parser.add_argument("--family", default="auto", help="auto, yolov5, yolov8 or yolov10 (default auto)")
    parser.add_argument("--labels", default=None, help="labels file, when the model's metadata has none")
    parser.add_argument("--input-size", type=_input_size, default=None, help="N or HxW, for dynamic-shape models")
    parser.add_argument("--classes", nargs="+", default=None, metavar="LABEL", help="only report these labels")


def _above_zero(what: str, at_most: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a number above 0 and at most ``at_most``; ``what`` says so in the error."""
    def parse(text: str) -> float:
        problem = argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        try:
            value = float(text)
        except ValueError:
            raise problem from None
        if not 0 < value <= at_most:  # NaN too
            raise problem
        return value
    return parse


_seconds = _above_zero("a number of seconds above 0")
_fraction = _above_zero("a number above 0, at most 1", at_most=1.0)


def _topic_level(text: str) -> str:
    """A device id or group name: one level of an MQTT topic."""
    if not text or any(c in text for c in "/+#\0"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be non-empty, without /, + or #")
    return text


def _add_broker_options(parser: argparse.ArgumentParser) -> None:
    broker = parser.add_argument_group("broker")
    broker.add_argument("--host", default="localhost", help="broker host (default localhost)")
    broker.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    broker.add_argument("--prefix", default="edged", help="topic prefix (mqtt.topic_prefix; default edged)")
    broker.add_argument("--username", default=None)
    broker.add_argument("--password-file", type=Path, default=None, metavar="FILE",
                        help="file whose first line is the password")
    broker.add_argument("--ca-file", type=Path, default=None, metavar="FILE",
                        help="CA certificates: connect with TLS")
    broker.add_argument("--cert-file", type=Path, default=None, metavar="FILE",
                        help="TLS client certificate (with --key-file)")
    broker.add_argument("--key-file", type=Path, default=None, metavar="FILE", help="TLS client key")
    broker.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version (default 5)")


def _broker_settings(args: argparse.Namespace) -> MqttSettings:
    """The broker options as MqttSettings, checked as a config's ``mqtt`` section is (ConfigError if not valid)."""
    tls = {"ca_file": args.ca_file, "cert_file": args.cert_file, "key_file": args.key_file}
    mqtt = {"host": args.host, "port": args.port, "topic_prefix": args.prefix, "username": args.username,
            "password_file": args.password_file, "tls": tls, "protocol": args.protocol}
    return validate({"mqtt": mqtt}, "broker options").mqtt


def build_parser() -> argparse.ArgumentParser:
    # -v/-q work before or after the command; SUPPRESS keeps a subcommand from resetting them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output (-vv: debug)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only")
    parser = argparse.ArgumentParser(prog="edged", description="Object detection on edge devices, over MQTT.",
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    detect = commands.add_parser("detect", parents=[common], help="detect in an image, a folder of images, a video or a camera",
                                 description="One JSON line per frame on stdout (or --out), with the fields of the "
                                             "MQTT detections message.")
    detect.add_argument("source", help="image, folder of images, video file, camera index or /dev/videoN, URL")
    _add_model_options(detect)
    detect.add_argument("--out", type=Path, default=None, help="write the JSON lines to this file")
    detect.add_argument("--save-video", type=Path, default=None, help="write an annotated copy (mp4)")
    detect.add_argument("--format", choices=("json", "summary"), default="json",
                        help="stdout format: json lines (default) or a readable summary line per frame")
    detect.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    detect.add_argument("--track", action="store_true",
                        help="track objects (ByteTrack): each detection gets track_id, velocity (px/s) and age_s; "
                             "only confirmed tracks' detections are printed")
    detect.add_argument("--min-hits", type=int, default=3, help="with --track: detections before a track is "
                                                                 "confirmed (default 3)")
    detect.add_argument("--max-age", type=int, default=30, help="with --track: frames a track survives unseen "
                                                                 "(default 30)")
    detect.add_argument("--stream", default=None, help="stream name in the messages (default: from the source)")
    detect.add_argument("--device-id", default=None, help="device_id in the messages (default: the hostname)")
    detect.set_defaults(handler=cmd_detect)

    replay = commands.add_parser(
        "replay", parents=[common], help="a recording's frames through a model again, compared with the recording",
        description="Feed the frames of an MCAP recording (edged run --record, foxglove.mcap) through the pipeline "
                    "with a model and thresholds: JSON lines of detections messages to --out (stdout without "
                    "--out or --compare); with --compare, a table of how they differ from the recorded ones, per "
                    "class (matched, new, lost) and the mAP@0.5 of the new against the recorded. Exit 2 for a "
                    "file that is not a whole MCAP recording with image channels.")
    replay.add_argument("recording", type=Path, metavar="FILE.mcap")
    _add_model_options(replay)
    replay.add_argument("--out", type=Path, default=None, metavar="FILE.jsonl",
                        help="write the JSON lines to this file")
    replay.add_argument("--compare", action="store_true", help="print how the new detections differ from the "
                                                               "recorded ones")
    replay.add_argument("--compare-json", type=Path, default=None, metavar="FILE",
                        help="the comparison as JSON too (implies --compare)")
    replay.add_argument("--match-iou", type=_fraction, default=0.5, metavar="IOU",
                        help="with --compare: IoU from which a new detection matches a recorded one of its class "
                             "(default 0.5)")
    replay.add_argument("--stream", default=None, help="only this stream (default: every image stream)")
    replay.set_defaults(handler=cmd_replay)

    run = commands.add_parser("run", parents=[common], help="the daemon",
                              description="Run the daemon. Config from -c, else $EDGED_CONFIG, else "
                                          "/etc/edged/edged.yaml, else the bundled demo config. SIGTERM/SIGINT stop "
                                          "it cleanly (exit 0); SIGHUP reloads the config file.")
    run.add_argument("-c", "--config", type=Path, default=None, help="config file (YAML)")
    run.add_argument("--record", type=Path, default=None, metavar="DIR",
                     help="record every stream's frames, boxes and detections to MCAP files in DIR, whatever "
                          "foxglove.mcap says (its size limits apply)")
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check-config", parents=[common], help="validate a config and print it",
                                description="Validate, print the effective config; exit 0 if valid, 2 with every "
                                            "error (file, key path, reason) if not.")
    check.add_argument("-c", "--config", type=Path, default=None, help="config file (YAML)")
    check.set_defaults(handler=cmd_check_config)

    sensors = commands.add_parser("sensors", parents=[common], help="the board's sensors, and the level they call for",
                                  description="Every sensor edged finds on this board (thermal zones, CPU clocks, "
                                              "memory and its pressure, cgroup limit, Raspberry Pi throttling, "
                                              "Jetson GPU), with its path and value, then the resource level the "
                                              "governor would compute from them with this config's thresholds.")
    sensors.add_argument("-c", "--config", type=Path, default=None, help="config file (YAML)")
    sensors.add_argument("--json", action="store_true", help="print JSON")
    sensors.set_defaults(handler=cmd_sensors)

    watch = commands.add_parser("watch", parents=[common], help="print a live summary of what devices publish")
    watch.add_argument("--device", default="+", help="one device id (default: all)")
    watch.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    _add_broker_options(watch)
    watch.set_defaults(handler=cmd_watch)

    config = commands.add_parser("config", parents=[common], help="push config to devices, or read a device's")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    push = config_commands.add_parser(
        "push", parents=[common], help="push a config change to a device, a group or the fleet",
        description="Publish FILE (YAML or JSON: a merge patch against the effective config, or a whole "
                    "{id, version, config}) to DEVICE, to the online devices of --group, or to the --fleet; print "
                    "each device's answer. Exit 0 only if every device expected to answer applied it.")
    push.add_argument("device", nargs="?", type=_topic_level, metavar="DEVICE",
                      help="device id (not with --fleet or --group)")
    push.add_argument("file", type=Path, metavar="FILE", help="the merge patch, or the whole push")
    target = push.add_mutually_exclusive_group()
    target.add_argument("--group", type=_topic_level, default=None, help="push to the devices in this group")
    target.add_argument("--fleet", action="store_true", help="push to every device")
    push.add_argument("--key", type=Path, default=None, metavar="FILE",
                      help="sign the push with this HMAC key (the devices' remote_config.hmac_key_file; "
                           "--key-file is the TLS client key)")
    push.add_argument("--version", type=int, default=None, metavar="N",
                      help="the push's version when FILE has none (default: the time in milliseconds)")
    push.add_argument("--timeout", type=_seconds, default=10.0, metavar="S",
                      help="seconds to wait for the answers (default 10)")
    _add_broker_options(push)
    push.set_defaults(handler=cmd_config_push, usage_error=push.error)

    get = config_commands.add_parser("get", parents=[common], help="print a device's effective config",
                                     description="Print the config state a device last published (retained): "
                                                 "its version, hash and effective config, secrets redacted.")
    get.add_argument("device", type=_topic_level, metavar="DEVICE", help="device id")
    get.add_argument("--timeout", type=_seconds, default=5.0, metavar="S",
                     help="seconds to wait for it (default 5)")
    _add_broker_options(get)
    get.set_defaults(handler=cmd_config_get)

    prof = commands.add_parser("profile", parents=[common], help="ONNX Runtime per-operator profile of a model",
                               description="Runs the model with ONNX Runtime profiling on, prints the operators that "
                                           "take the most time with their providers, and keeps the Chrome trace.")
    prof.add_argument("model", type=Path, help="ONNX model")
    prof.add_argument("--providers", nargs="+", choices=list(PROVIDERS), default=list(PROVIDERS),
                      metavar="PROVIDER", help=f"preference order among {', '.join(PROVIDERS)} (default: all)")
    prof.add_argument("--threads", type=int, default=0, help="inference threads (0: automatic)")
    prof.add_argument("--runs", type=int, default=20, help="profiled runs (default 20)")
    prof.add_argument("--warmup", type=int, default=3, help="runs before those, left out of the tables (default 3)")
    prof.add_argument("--input-size", type=_input_size, default=None, help="N or HxW, for dynamic-shape models")
    prof.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    prof.add_argument("--out", type=Path, default=Path("."), help="folder for the trace (default: the current one)")
    prof.add_argument("--json", action="store_true", help="print the report as JSON")
    prof.set_defaults(handler=cmd_profile)

    model = commands.add_parser("model", parents=[common], help="model tools").add_subparsers(dest="model_command", required=True,
                                                                              metavar="COMMAND")
    info = model.add_parser("info", parents=[common], help="inputs, outputs, family, labels, opset and size of a model")
    info.add_argument("model", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=cmd_model_info)

    optimize = model.add_parser("optimize", parents=[common], help="write fp16 and int8 variants; compare them with fp32",
                                description="Writes NAME.fp16.onnx and/or NAME.int8.onnx (static QDQ quantization "
                                            "calibrated on --calib) with ONNX Runtime's tools, then reports their "
                                            "agreement with the fp32 model on frames held back from calibration, "
                                            "and their CPU latency.")
    optimize.add_argument("model", type=Path, help="float32 ONNX detector")
    optimize.add_argument("--fp16", action="store_true", help="write NAME.fp16.onnx")
    optimize.add_argument("--int8", action="store_true", help="write NAME.int8.onnx (needs --calib)")
    optimize.add_argument("--calib", default=None, metavar="SOURCE",
                          help="video or folder of images: int8 calibration, and the frames to compare on")
    optimize.add_argument("--calib-frames", type=int, default=None, metavar="N",
                          help="frames read from SOURCE, every fifth held back for the comparison (default 200)")
    optimize.add_argument("--gt", type=Path, default=None, metavar="CLIP.json",
                          help="ground truth of the --calib clip: also report mAP@0.5")
    optimize.add_argument("--out", type=Path, default=None, metavar="DIR", help="folder for the variants "
                                                                             "(default: the model's)")
    optimize.add_argument("--json", action="store_true", help="print the report as JSON")
    optimize.set_defaults(handler=cmd_model_optimize)

    prepare = model.add_parser("prepare", parents=[common], help="measure the variants this device runs; write the ladder",
                               description="On the device: measure the variants the configured providers run "
                                           "(precisions, input sizes) and write the ladder the daemon steps down "
                                           "through to <remote_config.state_dir>/ladder.json. A fresh ladder is kept.")
    prepare.add_argument("-c", "--config", type=Path, default=None, help="config file (YAML)")
    prepare.add_argument("--force", action="store_true", help="measure again even if the ladder is fresh")
    prepare.add_argument("--runs", type=int, default=50, help="timed runs per variant (default 50)")
    prepare.add_argument("--warmup", type=int, default=5, help="untimed runs before those (default 5)")
    prepare.set_defaults(handler=cmd_model_prepare)

    bench = commands.add_parser("bench", parents=[common], help="latency and throughput per provider, precision, size",
                                description="Latency p50/p90/p99, throughput and memory of each variant of a model "
                                            "(provider x precision x input size), after warm-up.")
    bench.add_argument("model", type=Path, nargs="?", default=None, help="ONNX model (default: the bundled demo)")
    bench.add_argument("--providers", nargs="+", choices=list(PROVIDERS), default=None, metavar="PROVIDER",
                       help="among tensorrt, cuda, xnnpack, cpu (default: those in this onnxruntime build)")
    bench.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                       help="fp16 and int8 run NAME.fp16.onnx and NAME.int8.onnx, or TensorRT's flags (default: all)")
    bench.add_argument("--sizes", nargs="+", type=_input_size, default=None, metavar="N|HxW",
                       help="input sizes, for dynamic-shape models (default: the model's own)")
    bench.add_argument("--runs", type=int, default=100, help="timed runs per variant (default 100)")
    bench.add_argument("--warmup", type=int, default=10, help="untimed runs before those (default 10)")
    bench.add_argument("--threads", type=int, default=0, help="inference threads (0: automatic)")
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.add_argument("--plot", type=Path, default=None, metavar="FILE", help="write a PNG bar chart (needs matplotlib)")
    bench.set_defaults(handler=cmd_bench)
    return parser


def make_detector(args: argparse.Namespace) -> Detector:
    from edged.tracking import detection_floor

    config = SessionConfig(providers=tuple(args.providers), threads=args.threads)
    confidence = detection_floor(args.conf, TRACK_LOW) if getattr(args, "track", False) else args.conf
    return Detector(args.model or demo_model_path(), config, family=args.family, labels=args.labels,
                    input_size=args.input_size, confidence=confidence, iou=args.iou, classes=args.classes)


def cmd_detect(args: argparse.Namespace) -> int:
    from edged.messages import default_device_id
    from edged.pipeline import Pipeline
    from edged.sinks import AnnotatedVideoSink, JsonLinesSink, SummarySink
    from edged.sources import open_source, source_name

    source = open_source(args.source)
    detector = make_detector(args)
    out_file = args.out.open("w") if args.out else None
    sinks = []
    if out_file:
        sinks.append(JsonLinesSink(out_file))
    if args.format == "summary":
        sinks.append(SummarySink(sys.stdout))
    elif not out_file:
        sinks.append(JsonLinesSink(sys.stdout))
    if args.save_video:
        sinks.append(AnnotatedVideoSink(args.save_video, source.fps))
    tracker = None
    if args.track:
        from edged.tracking import Tracker

        tracker = Tracker(min_hits=args.min_hits, max_age=args.max_age, high=args.conf, low=TRACK_LOW)
    pipeline = Pipeline(detector, args.stream or source_name(args.source), sinks,
                        args.device_id or default_device_id(), tracker=tracker)
    try:
        with source:
            pipeline.run(source, max_frames=args.max_frames)
    finally:
        if out_file:
            out_file.close()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from collections.abc import Iterator
    from typing import Any

    from tqdm import tqdm

    from edged.pipeline import Pipeline
    from edged.replay import CompareSink, Comparison, Recording
    from edged.sinks import JsonLinesSink
    from edged.sources import Frame

    compare = args.compare or args.compare_json is not None
    recording = Recording.open(args.recording)
    out_file = json_file = None
    try:
        if args.stream is not None and args.stream not in recording.streams:
            raise InputError(f"{args.recording}: no stream {args.stream!r}; its streams: "
                             f"{', '.join(recording.streams)}")
        out_file = _open_output(args.out) if args.out else None
        json_file = _open_output(args.compare_json) if args.compare_json else None
        detector = make_detector(args)
        comparison = Comparison(match_iou=args.match_iou)
        for stream in [args.stream] if args.stream else recording.streams:
            recorded: dict[float, Any] = {}
            sinks: list[Any] = []
            if out_file or not compare:
                sinks.append(JsonLinesSink(out_file or sys.stdout))
            if compare:
                sinks.append(CompareSink(comparison, recorded))

            def frames(stream: str = stream, recorded: dict[float, Any] = recorded) -> Iterator[Frame]:
                for frame, message in tqdm(recording.frames(stream), desc=f"replay {stream}", unit="frame",
                                           total=recording.image_counts.get(stream), disable=None, leave=False):
                    recorded[frame.ts_capture] = message
                    yield frame
            Pipeline(detector, stream, sinks, "replay").run(frames())
        if compare:
            print(comparison.table())
            if json_file:
                json_file.write(json.dumps(comparison.to_json(), indent=2) + "\n")
    finally:
        recording.close()
        for file in (out_file, json_file):
            if file:
                file.close()
    return 0


def _open_output(path: Path):  # -> TextIO
    try:
        return path.open("w")
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _load(path_arg: Path | None):  # -> (Config, Path | None)
    from edged.config import config_path, load_config

    path = config_path(path_arg)
    if path is None:
        from edged.daemon import demo_config

        log.info("no config file (-c, $EDGED_CONFIG, /etc/edged/edged.yaml): using the bundled demo config")
        return demo_config(), None
    return load_config(path), path


def cmd_run(args: argparse.Namespace) -> int:
    from edged.daemon import Daemon
    from edged.preflight import check_runtime
    from edged.recording import folder_problem

    signals = args.signals or SignalLatch().install()
    config, path = _load(args.config)
    check_runtime(config, str(path) if path else None)  # what check-config rejects, run rejects: exit 2
    if args.record is not None and (problem := folder_problem(args.record)):
        raise ConfigError([f"--record: {problem}"])
    if signals.stop.is_set():  # SIGTERM/SIGINT while starting: nothing to undo yet
        log.info("stop requested during start-up: exiting")
        return 0
    return Daemon(config, path, signals, args.record).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    import yaml

    from edged.preflight import check_runtime

    config, path = _load(args.config)
    check_runtime(config, str(path) if path else None)  # what run needs: model, labels, TLS and password files
    print(f"# {path or 'bundled demo config'}: valid", file=sys.stderr)
    print(yaml.safe_dump(config.effective(), sort_keys=False), end="")
    return 0


def cmd_sensors(args: argparse.Namespace) -> int:
    import time

    from edged.resources.governor import level_of
    from edged.resources.sensors import Sensors

    from edged.config import Config, config_path, load_config

    path = config_path(args.config)
    settings = (load_config(path) if path else Config()).resources  # no demo config: it would render a clip
    sensors = Sensors(settings.sysfs_root)
    time.sleep(SENSORS_CPU_WINDOW_S)  # CPU % is the busy share between two reads
    sample, found = sensors.read()
    level, cause, readings = level_of(Sensors.readings(sample), settings)
    if args.json:
        print(json.dumps({"sysfs_root": str(settings.sysfs_root), "sensors": [
            {"sensor": name, "path": path, "value": value} for name, path, value in found],
            "resources": sample, "level": level, "cause": cause, "readings": readings}, indent=2))
        return 0
    root = settings.sysfs_root
    width = max((len(name) for name, _, _ in found), default=0)
    for name, path, value in found:
        print(f"{name:{width}}  {value!s:>12}  {root / path}")
    if not found:
        print(f"no sensor found under {root}")
    print(f"level: {level}" + (f" ({cause}: {json.dumps(readings)})" if cause else ""))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from edged.watch import watch

    return watch(_broker_settings(args), args.device, args.duration)


def cmd_config_push(args: argparse.Namespace) -> int:
    from edged.remote.operator import push_config

    many = args.fleet or args.group is not None
    if args.device is None and not many:
        args.usage_error("DEVICE is missing (or push to --fleet, or --group G)")
    if args.device is not None and many:
        args.usage_error("DEVICE goes without --fleet and --group")
    return push_config(_broker_settings(args), args.file, device=args.device, group=args.group, key_path=args.key,
                       version=args.version, timeout_s=args.timeout)


def cmd_config_get(args: argparse.Namespace) -> int:
    from edged.remote.operator import get_config

    return get_config(_broker_settings(args), args.device, args.timeout)


def cmd_profile(args: argparse.Namespace) -> int:
    from edged.profile import profile

    report = profile(args.model, providers=args.providers, threads=args.threads, runs=args.runs, warmup=args.warmup,
                     input_size=args.input_size, out_dir=args.out)
    print(json.dumps(report.to_json(args.top), indent=2) if args.json else report.format(args.top))
    return 0


def cmd_model_prepare(args: argparse.Namespace) -> int:
    from edged.ladder import LadderSpec, prepare

    config, _ = _load(args.config)
    ladder, measured = prepare(LadderSpec.from_config(config), warmup=args.warmup, runs=args.runs, force=args.force)
    print(ladder.report())
    if not measured:
        print("fresh: not measured again (--force measures again)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edged.bench import run_bench

    return run_bench(args.model or demo_model_path(), providers=args.providers, precisions=args.precisions,
                     sizes=args.sizes, runs=args.runs, warmup=args.warmup, threads=args.threads, as_json=args.json,
                     plot_path=args.plot)


def cmd_model_info(args: argparse.Namespace) -> int:
    info = read_model_info(args.model)
    family, labels, problem = None, None, None
    try:
        detector = Detector(args.model, SessionConfig(providers=("cpu",)))
        family, labels = detector.family.name, detector.labels
    except ModelError as exc:
        problem = str(exc)
    report = {
        "path": str(info.path), "size_bytes": info.size_bytes, "opset": info.opset,
        "inputs": info.inputs, "outputs": info.outputs, "family": family, "labels": labels,
        "metadata": info.metadata,
    }
    if problem:
        report["problem"] = problem
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"model:    {info.path}  ({info.size_bytes / 1e6:.2f} MB, opset {info.opset})")
        for kind in ("inputs", "outputs"):
            for value in report[kind]:
                print(f"{kind[:-1] + ':':9} {value['name']}  {value['type']}  {value['shape']}")
        print(f"family:   {family or 'unknown'}")
        if labels is not None:
            print(f"labels:   {len(labels)}: {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''}")
        for key in ("description", "imgsz", "stride", "task"):
            if key in info.metadata:
                print(f"{key + ':':9} {info.metadata[key]}")
        if problem:
            print(f"problem:  {problem}")
    return 0 if problem is None else EXIT_ERROR


def cmd_model_optimize(args: argparse.Namespace) -> int:
    from edged.optimize import format_report, optimize

    report = optimize(args.model, fp16=args.fp16, int8=args.int8, calib=args.calib, frames=args.calib_frames,
                      ground_truth=args.gt, out_dir=args.out)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def main(argv: Sequence[str] | None = None, signals: SignalLatch | None = None) -> int:
    """``signals``: for ``edged run``, the handlers installed before the heavy imports (``edged.__main__``)."""
    args = build_parser().parse_args(argv)
    args.signals = signals
    setup_logging(-1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0))
    try:
        return args.handler(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"edged: config error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except EdgedError as exc:
        print(f"edged: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, InputError) else EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edged detect ... | head`
        return 0
