"""Shared fixtures: the repo's paths, a rendered test clip, and the real ``edged`` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edged.synthetic import write_clip
from tests.broker import broker  # noqa: F401  (the fixture: a real Mosquitto on a free loopback port)
from tests.rtsp import rtsp_server  # noqa: F401  (the fixture: a real RTSP camera on a free loopback port)

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "models" / "shapes-yolov8.onnx"
# The public YOLOv8n graph with random weights, beside the checkout (CI clones next to shared/).
YOLOV8N = REPO.parent / "shared" / "models" / "yolov8n-640-random.onnx"

# Seeds the detector never trained on (training draws from default_rng([seed, worker])).
EVAL_CLIP_SEED = 20261125


@dataclass
class Clip:
    video: Path
    truth: Path


@pytest.fixture(scope="session")
def eval_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """The accuracy bar's clip: 600 frames rendered from an unseen seed."""
    video = write_clip(tmp_path_factory.mktemp("clip") / "eval.mp4", seed=EVAL_CLIP_SEED, frames=600)
    return Clip(video, video.with_suffix(".json"))


@pytest.fixture(scope="session")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    video = write_clip(tmp_path_factory.mktemp("short") / "short.mp4", seed=5, frames=20)
    return Clip(video, video.with_suffix(".json"))


def run_edged(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m edged ARGS`` as a real process; returns its exit code, stdout and stderr."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "edged", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


@pytest.fixture
def looping_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("loop") / "loop.mp4", seed=11, frames=60, width=320, height=240)
