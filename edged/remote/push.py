"""A config push on the wire: ``{id, version, config}`` as JSON or YAML, optionally signed.

Both ends use this module: the device parses and verifies, the operator's ``edged config push`` signs.
The signature is the MQTT 5 user property ``signature``: the hex HMAC-SHA256 of the raw payload bytes under
the key in ``remote_config.hmac_key_file``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.config import ConfigError, file_problem, parse_yaml

SIGNATURE_PROPERTY = "signature"
MAX_ID_CHARS = 128
MAX_KEY_BYTES = 4096


class PushRejected(Exception):
    """A push refused before it reached validation; ``errors`` are the result's errors."""

    def __init__(self, errors: list[str], push_id: str | None = None, version: int | None = None):
        super().__init__("; ".join(errors))
        self.errors = errors
        self.push_id = push_id
        self.version = version


@dataclass(frozen=True)
class Push:
    id: str
    version: int
    patch: dict[str, Any]  # an RFC 7396 merge patch against the effective config


def read_key(path: Path) -> bytes:
    """The HMAC key: the file's bytes, surrounding whitespace removed. ConfigError naming the file if unusable."""
    problem = file_problem(path)
    if problem is None:
        try:
            key = path.read_bytes()[:MAX_KEY_BYTES + 1].strip()
        except OSError as exc:
            problem = f"cannot read: {exc.strerror}"
        else:
            if len(key) > MAX_KEY_BYTES:
                problem = f"more than {MAX_KEY_BYTES} bytes: not a key"
            elif not key:
                problem = "empty"
    if problem is not None:
        raise ConfigError([f"{path}: remote_config.hmac_key_file: {problem}"])
    return key


def sign(payload: bytes, key: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def verify(payload: bytes, signature: str | None, key: bytes) -> None:
    """PushRejected unless ``signature`` is the payload's HMAC under ``key`` (compared in constant time)."""
    if signature is None:
        raise PushRejected([f"unsigned: this device requires the MQTT 5 user property '{SIGNATURE_PROPERTY}' "
                            "(hex HMAC-SHA256 of the payload)"])
    if not hmac.compare_digest(signature.strip().lower().encode("ascii", "replace"), sign(payload, key).encode()):
        raise PushRejected(["bad signature: not the HMAC-SHA256 of this payload under this device's key"])


def parse_push(payload: bytes, max_bytes: int) -> Push:
    """The push in ``payload`` (JSON, or YAML parsed safely and bounded), checked for shape; PushRejected if not.

    The size is checked before anything is parsed.
    """
    if len(payload) > max_bytes:
        raise PushRejected([f"payload of {len(payload)} bytes; remote_config.max_payload_kb allows {max_bytes}"])
    try:
        document = json.loads(payload)
    except ValueError:
        try:
            document = parse_yaml(payload, "payload")
        except ConfigError as exc:
            raise PushRejected([f"not valid JSON or YAML: {exc.errors[0].removeprefix('payload: ')}"]) from None
    if not isinstance(document, dict):
        raise PushRejected([f"(top level): expected a mapping {{id, version, config}}, got {type(document).__name__}"])
    push_id, version = document.get("id"), document.get("version")
    shown_id = push_id if isinstance(push_id, str) else None
    shown_version = version if isinstance(version, int) and not isinstance(version, bool) else None
    errors = []
    if not isinstance(push_id, str) or not 0 < len(push_id) <= MAX_ID_CHARS:
        errors.append(f"id: must be a string of 1 to {MAX_ID_CHARS} characters")
    if shown_version is None or shown_version < 0:
        errors.append("version: must be a non-negative integer")
    if not isinstance(document.get("config"), dict):
        errors.append("config: must be a mapping (a merge patch against the effective config)")
    unknown = sorted(set(document) - {"id", "version", "config"})
    if unknown:
        errors.extend(f"{key}: unknown key (a push is {{id, version, config}})" for key in unknown)
    if errors:
        raise PushRejected(errors, shown_id, shown_version)
    return Push(push_id, shown_version, document["config"])  # type: ignore[arg-type]
