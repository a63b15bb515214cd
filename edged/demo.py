"""The bundled demo: the shapes detector shipped in ``models/`` (package ``edged.models``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_MODEL = "shapes-yolov8.onnx"


def demo_model_path() -> Path:
    try:
        return Path(str(resources.files("edged.models").joinpath(DEMO_MODEL)))
    except ModuleNotFoundError:  # a source checkout on PYTHONPATH, not installed
        return Path(__file__).resolve().parent.parent / "models" / DEMO_MODEL
