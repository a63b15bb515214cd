"""The bundled demo: the shapes detector shipped in ``models/`` (package ``edged.models``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_MODEL = "shapes-yolov8.onnx"


def demo_model_path() -> Path:
    return Path(str(resources.files("edged.models").joinpath(DEMO_MODEL)))
