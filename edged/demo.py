"""The bundled demo: the shapes detector shipped in ``models/`` (package ``edged.models``) and a
sample clip rendered on first use."""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

log = logging.getLogger("edged.demo")

DEMO_MODEL = "shapes-yolov8.onnx"
DEMO_CLIP_SEED = 7
DEMO_CLIP_FRAMES = 300


def demo_model_path() -> Path:
    try:
        return Path(str(resources.files("edged.models").joinpath(DEMO_MODEL)))
    except ModuleNotFoundError:  # a source checkout on PYTHONPATH, not installed
        return Path(__file__).resolve().parent.parent / "models" / DEMO_MODEL


def demo_clip_path() -> Path:
    """The sample clip (moving shapes, 10 s at 30 fps), rendered into the cache on first use."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edged"
    clip = cache / f"shapes-seed{DEMO_CLIP_SEED}.mp4"
    if not clip.exists():
        from edged.synthetic import write_clip

        log.info("rendering the demo clip to %s", clip)
        partial = clip.with_name("rendering-" + clip.name)
        write_clip(partial, seed=DEMO_CLIP_SEED, frames=DEMO_CLIP_FRAMES)
        partial.with_suffix(".json").replace(clip.with_suffix(".json"))
        partial.replace(clip)  # atomic: a half-written clip is never picked up
    return clip
