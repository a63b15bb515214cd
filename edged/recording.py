"""MCAP recording of the live view's channels (``foxglove.mcap``, ``edged run --record DIR``).

One file at a time, ``<device>_<UTC start>_<n>.mcap`` in the folder; past ``max_file_mb`` the next file starts,
and as it does the oldest ``.mcap`` files of the folder are deleted until the folder, with room for the new file
to reach ``max_file_mb``, is within ``max_total_mb``: an edge device's disk never fills. The writer (foxglove-sdk's) keeps the chunk it is filling in memory and writes whole chunks; ``tick``
ends the chunk and fsyncs the file every ``FLUSH_S``, so after a power cut a file holds every message up to
its last flush: MCAP's streaming readers read it whole but for that last chunk (the summary at the end, which
seeking readers want, is missing: ``mcap recover`` rewrites it).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from edged.errors import EdgedError

if TYPE_CHECKING:  # foxglove-sdk is imported where a recording starts: edged run checks folder_problem without it
    from foxglove import Context
    from foxglove.mcap import MCAPWriter

log = logging.getLogger("edged.recording")

FLUSH_S = 1.0  # the most a power cut loses
MAX_CHUNK_BYTES = 1 << 20  # the writer's default; smaller where a file is small, so that files rotate in time
MB = 1024 * 1024


class _SyncedFile:
    """The writer's file: ``flush`` reaches the disk (fsync), and the size is known without a stat."""

    def __init__(self, path: Path):
        self.file: BinaryIO = path.open("xb")  # never overwrites a recording

    def write(self, data: bytes | bytearray) -> int:
        return self.file.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def flush(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def size(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


def folder_problem(directory: Path) -> str | None:
    """Why recordings cannot be written in ``directory`` (made if missing), or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".edged-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        return f"{directory}: cannot write recordings there ({exc.strerror or exc})"
    return None


def recordings(directory: Path) -> list[Path]:
    """The folder's MCAP files, oldest first."""
    found = [p for p in directory.glob("*.mcap") if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


class Recorder:
    """Writes what ``context``'s channels log to rotating MCAP files in ``directory``. Not thread-safe: the
    caller serialises ``tick``, ``close`` and the channels' logging (edged.live_view holds one lock)."""

    def __init__(self, context: Context, directory: Path, max_file_mb: float, max_total_mb: float, device_id: str,
                 key: str = "foxglove.mcap.dir"):
        self.context = context
        self.directory = directory
        self.max_file = int(max_file_mb * MB)
        self.max_total = int(max_total_mb * MB)
        self.device_id = device_id
        self.key = key  # what a problem with the folder is reported against
        self.files = 0
        self.path: Path | None = None
        self._file: _SyncedFile | None = None
        self._writer: MCAPWriter | None = None
        self._next_flush = 0.0

    def start(self) -> None:
        """Open the first file; EdgedError naming the key and folder when it cannot be written."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise EdgedError(f"{self.key}: {self.directory}: cannot record there ({exc.strerror or exc})") from None
        log.info("recording to %s (a file up to %.0f MB, %.0f MB in all)", self.directory, self.max_file / MB,
                 self.max_total / MB)

    def _open(self) -> None:
        self.files += 1
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.path = self.directory / f"{self.device_id}_{stamp}_{self.files:04d}.mcap"
        self._file = _SyncedFile(self.path)
        import foxglove
        from foxglove.mcap import MCAPCompression, MCAPWriteOptions

        options = MCAPWriteOptions(compression=MCAPCompression.Lz4, profile="",
                                   chunk_size=min(MAX_CHUNK_BYTES, max(self.max_file // 8, 4096)))
        self._writer = foxglove.open_mcap(self._file, context=self.context, writer_options=options)
        self._writer.write_metadata("edged", {"device_id": self.device_id, "started": stamp})
        self._next_flush = time.monotonic() + FLUSH_S
        self._prune()

    def tick(self, now: float) -> None:
        """Flush every FLUSH_S; start the next file past the size limit."""
        if self._writer is None or self._file is None:
            return
        if self._file.size() >= self.max_file:
            self._close_file()
            try:
                self._open()
            except OSError as exc:
                log.error("%s: %s: recording stopped (%s)", self.key, self.directory, exc.strerror or exc)
                self._writer = self._file = None
            return
        if now >= self._next_flush:
            self._next_flush = now + FLUSH_S
            self._writer.flush()

    def _prune(self) -> None:
        """Delete the oldest recordings until the folder, with room for the file just opened to grow to
        max_file_mb, is within max_total_mb (the open file stays)."""
        files = recordings(self.directory)
        total = sum(p.stat().st_size for p in files)
        budget = self.max_total - self.max_file
        for old in files:
            if total <= budget:
                break
            if old == self.path:
                continue
            size = old.stat().st_size
            try:
                old.unlink()
            except OSError as exc:
                log.warning("%s: cannot delete an old recording: %s", old, exc.strerror or exc)
                continue
            total -= size
            log.info("deleted the oldest recording %s (%.1f MB): the folder is past %.0f MB", old.name, size / MB,
                     self.max_total / MB)

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()  # writes the summary and footer, through our flush (fsync)
        if self._file is not None:
            self._file.close()
        self._writer = self._file = None

    def close(self) -> None:
        self._close_file()
