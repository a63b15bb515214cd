"""What remote config keeps across restarts: the accepted pushes' patches, the last version, recent ids.

One JSON file, ``<state_dir>/remote-config.json``, written atomically (temp file, fsync, rename, fsync of
the folder), so a power cut leaves the old state or the new one, never half of either. A push is written
in two phases: ``prepare`` writes the temp file before the push is applied (an unwritable state dir fails
the push before anything changes), ``commit`` renames it once the push is applied.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.errors import EdgedError
from edged.remote.patch import compose

log = logging.getLogger("edged.remote")

STATE_FILE = "remote-config.json"
SCHEMA = "edged.remote_state/1"
RECENT_IDS = 256  # push ids remembered, to refuse one sent again
MAX_STATE_BYTES = 4 << 20


class StateError(EdgedError):
    """The state dir cannot be read or written; the message names it."""


@dataclass
class RemoteState:
    version: int | None = None  # the last applied push's version; None: none applied yet
    ids: list[str] = field(default_factory=list)  # the last RECENT_IDS applied push ids, oldest first
    patches: list[dict[str, Any]] = field(default_factory=list)  # applied in order onto the file config

    def with_push(self, push_id: str, version: int, patch: dict[str, Any]) -> "RemoteState":
        """This state after one more applied push; its patch is folded into the last one where one patch can
        say both (``compose``), so the list stays short."""
        patches = list(self.patches)
        folded = compose(patches[-1], patch) if patches else None
        if folded is None:
            patches.append(patch)
        else:
            patches[-1] = folded
        return RemoteState(version, (self.ids + [push_id])[-RECENT_IDS:], patches)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": self.version, "ids": self.ids, "patches": self.patches}

    @classmethod
    def from_json(cls, data: Any) -> "RemoteState":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"not an {SCHEMA} document")
        version, ids, patches = data.get("version"), data.get("ids"), data.get("patches")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise ValueError("version: not an integer")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError("ids: not a list of strings")
        if not isinstance(patches, list) or not all(isinstance(p, dict) for p in patches):
            raise ValueError("patches: not a list of mappings")
        return cls(version, ids, patches)


class Pending:
    """A state written to a temp file, not yet in force: ``commit()`` or ``discard()``."""

    def __init__(self, store: "StateStore", temp: Path, state: RemoteState):
        self.store, self.temp, self.state = store, temp, state

    def commit(self) -> None:
        try:
            os.replace(self.temp, self.store.path)
            _fsync_dir(self.store.path.parent)
        except OSError as exc:
            self.discard()
            raise StateError(f"{self.store.path}: cannot write the remote config state: {exc.strerror}") from None
        self.store.state = self.state

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)


class StateStore:
    def __init__(self, state_dir: Path):
        self.path = state_dir / STATE_FILE
        self.state = RemoteState()

    def load(self) -> str | None:
        """Read the persisted state. A file that cannot be read or understood is set aside (renamed with a
        ``.bad-<time>`` suffix) and the state starts empty; the returned sentence says so. None if all is well."""
        if not self.path.exists():
            return None
        try:
            if self.path.stat().st_size > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            self.state = RemoteState.from_json(json.loads(self.path.read_bytes()))
            return None
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return self.set_aside(f"cannot be used ({reason})")

    def set_aside(self, why: str) -> str:
        """Rename the state file out of the way (kept for a person to look at) and start empty."""
        self.state = RemoteState()
        aside = self.path.with_name(f"{self.path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(self.path, aside)
            where = f"set aside as {aside.name}"
        except OSError as exc:
            where = f"and could not be set aside ({exc.strerror})"
        return f"{self.path}: the persisted remote config overrides {why}; {where}; running the file config alone"

    def prepare(self, state: RemoteState) -> Pending:
        """Write ``state`` to a temp file beside the state file (StateError, naming the dir, if it cannot be)."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=folder)
        except OSError as exc:
            raise StateError(f"remote_config.state_dir {folder}: not writable ({exc.strerror}); "
                             "the push cannot be persisted") from None
        temp = Path(name)
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(state.to_json(), file, indent=1)
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StateError(f"remote_config.state_dir {folder}: cannot write ({exc.strerror}); "
                             "the push cannot be persisted") from None
        return Pending(self, temp, state)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
