"""Model families: one module per output layout, each owning its pre- and post-processing facts.

A family turns the model's raw output into candidate boxes (xyxy, model-input pixels),
scores and class ids, and says whether those still need NMS. Adding a family means adding
one module here with a ``Family`` subclass decorated with ``@register``.
"""

from __future__ import annotations

from edged.inference.families.base import FAMILIES, Candidates, Family, register
from edged.inference.families import yolov5, yolov8, yolov10  # noqa: F401  (registers them)
from edged.errors import ModelError

# Tie-break when a shape fits several layouts: a [1, K, 6] output with few rows is an
# end-to-end (yolov10) head; grid heads always have thousands of rows.
_PREFERENCE = ("yolov10", "yolov8", "yolov5")


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]()
    except KeyError:
        raise ModelError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None


def detect_family(shape: tuple[int, ...], num_classes: int | None, hint: str | None = None) -> Family | None:
    """The family whose layout fits ``shape``; ``hint`` (model metadata) wins when it fits too."""
    if hint in FAMILIES and FAMILIES[hint].matches(shape, num_classes):
        return FAMILIES[hint]()
    for name in _PREFERENCE:
        if FAMILIES[name].matches(shape, num_classes):
            return FAMILIES[name]()
    return None


__all__ = ["Candidates", "Family", "FAMILIES", "detect_family", "get_family", "register"]
