"""What a pushed config may not do, whatever the schema allows: carry secrets inline, or point outside the
folders a remote operator may reach. Each problem is ``key.path: reason``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from edged.config import Config
from edged.specs import FILE_KINDS, source_kind

# Key names that hold a secret when inline; ``*_file`` keys name a file on the device instead.
SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "private_key", "hmac_key",
                "credential")
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, str | None, Any]]:
    """(key path, key name or None for list items, value) of every node under ``value``."""
    if isinstance(value, dict):
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else str(key)
            yield child_path, str(key), child
            yield from _walk(child, child_path)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            child_path = f"{path}[{index}]"
            yield child_path, None, child
            yield from _walk(child, child_path)


def inline_secrets(patch: dict[str, Any]) -> list[str]:
    """Secrets written into the push itself: keys named like one, and URLs carrying a password."""
    errors = []
    for path, key, value in _walk(patch):
        name = (key or "").lower()
        if any(word in name for word in SECRET_WORDS) and not name.endswith("_file") and value is not None:
            errors.append(f"{path}: inline secret refused: secrets come from files already on the device "
                          "(e.g. mqtt.password_file)")
        elif isinstance(value, str) and _URL_PASSWORD.match(value):
            errors.append(f"{path}: inline secret refused: a URL with a password in it (set such a source in the "
                          "config file on the device)")
    return errors


def _paths(config: Config) -> Iterator[tuple[str, Path]]:
    """Every file or folder the config names, with its key path."""
    model, tls = config.model, config.mqtt.tls
    named: list[tuple[str, Path | None]] = [
        ("model.path", model.path), ("model.labels", model.labels if isinstance(model.labels, Path) else None),
        ("mqtt.password_file", config.mqtt.password_file), ("mqtt.tls.ca_file", tls.ca_file),
        ("mqtt.tls.cert_file", tls.cert_file), ("mqtt.tls.key_file", tls.key_file),
        ("remote_config.hmac_key_file", config.remote_config.hmac_key_file),
        ("remote_config.state_dir", config.remote_config.state_dir),
        ("inference.tensorrt.cache_dir", config.inference.tensorrt.cache_dir),
        ("foxglove.mcap.dir", config.foxglove.mcap.dir)]
    for index, stream in enumerate(config.streams):
        if isinstance(stream.source, str) and source_kind(stream.source) in FILE_KINDS:
            named.append((f"streams[{index}].source", Path(stream.source)))
    yield from ((key, path) for key, path in named if path is not None)


def _family(key: str) -> str:
    """Stream sources compare across indices: re-sending the list with a source moved is not a new path."""
    return "streams[].source" if key.startswith("streams[") else key


def paths_outside(patch: dict[str, Any], new: Config, current: Config, roots: list[Path]) -> list[str]:
    """Paths the push brings in that are not inside ``roots`` once resolved (symlinks followed), or that spell
    ``..``. Paths the running config already uses stay allowed, so a push may repeat them."""
    errors = [f"{path}: '..' refused in a pushed path" for path, _, value in _walk(patch)
              if isinstance(value, str) and ".." in Path(value).parts]
    in_use: dict[str, set[Path]] = {}
    for key, path in _paths(current):
        in_use.setdefault(_family(key), set()).add(path)
    allowed = [root.resolve() for root in roots]
    for key, path in _paths(new):
        if path in in_use.get(_family(key), set()):
            continue
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in allowed):
            errors.append(f"{key}: {path} is outside the folders a push may use "
                          f"({', '.join(str(root) for root in allowed)})")
    return errors
