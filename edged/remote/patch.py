"""JSON merge patches (RFC 7396): how a push changes the effective config, and how accepted pushes add up.

A patch is a mapping: a key set to null is removed (back to its default), a mapping is merged key by key,
anything else (lists included: ``streams`` is replaced whole) replaces the value.
"""

from __future__ import annotations

import copy
from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` applied (RFC 7396 section 2); neither argument is changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def compose(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any] | None:
    """One patch that does what applying ``first`` then ``second`` does to any target, or None when no single
    merge patch can: where ``first`` replaces or removes a key (a plain value, a list, a null) and ``second``
    then patches that key with a mapping, the result must replace the target's mapping, which a merge patch
    cannot say. (Unlike ``merge_patch(first, second)``, a null in ``second`` stays a null: it must still remove
    the key from the target.)
    """
    result = copy.deepcopy(first)
    for key, value in second.items():
        if isinstance(value, dict) and key in first:
            if not isinstance(first[key], dict):
                return None
            inner = compose(first[key], value)
            if inner is None:
                return None
            result[key] = inner
        else:
            result[key] = copy.deepcopy(value)
    return result


def changed_paths(patch: dict[str, Any], prefix: str = "") -> list[str]:
    """The key paths a patch sets or removes, e.g. ``model.confidence``; a list value counts as one path."""
    paths = []
    for key, value in patch.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            paths.extend(changed_paths(value, path))
        else:
            paths.append(path)
    return paths
