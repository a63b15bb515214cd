"""The C heap of a long-running process that replaces ONNX Runtime sessions and streams at run time.

glibc gives each thread that allocates an arena of its own, up to 8 per core. A session built in one thread
and used from others leaves its freed memory scattered over several arenas, in pages that stay partly used,
so that every reload kept a few MB more: 20 session rebuilds grew the daemon from 193 to 238 MB, and 50 to
252 MB, although every replaced session was freed. With two arenas and a trim after each replacement,
the same reloads stay within a few MB. Elsewhere (musl, macOS) these calls do nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("edged.heap")

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters, from glibc's malloc.h
ARENAS = 2
MMAP_THRESHOLD = 4 << 20  # blocks this large (ONNX Runtime's arena chunks) get pages of their own


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_arenas(arenas: int = ARENAS) -> None:
    """Cap glibc's malloc arenas, and fix the size from which a block is mapped on its own (glibc would
    otherwise raise that threshold after the first such block is freed, and put the next session's
    large blocks in the arenas, where they fragment). Call before the process starts its threads."""
    libc = _libc()
    if libc is None:
        return
    for name, parameter, value in (("M_ARENA_MAX", M_ARENA_MAX, arenas), ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD,
                                                                         MMAP_THRESHOLD)):
        if not libc.mallopt(parameter, value):
            log.debug("mallopt(%s, %d) refused", name, value)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``), after a session or a
    stream is freed; without it, memory freed by ONNX Runtime and FFmpeg never shows as released."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
