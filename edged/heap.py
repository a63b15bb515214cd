"""The C heap of a long-running process that replaces ONNX Runtime sessions and streams at run time.

glibc gives each thread that allocates an arena of its own, up to 8 per core, and raises its threshold for
mapping a block on its own pages each time such a block is freed. A session built in one thread and used
from others then leaves its freed memory scattered over arenas, in pages that stay partly used: 20 session
rebuilds grew the daemon from 193 to 238 MB, and 50 to 252 MB, although every replaced session was freed.
With two arenas, the threshold fixed at 32 MB and a trim after each replacement, 20 reloads stay within
3 MB. 32 MB is where glibc's sliding threshold ends anyway on 64-bit; a lower one (4 MB was tried) puts
every frame's input tensor (4.9 MB at 640x640) on fresh pages, which cost about 6 ms of latency a frame.
Elsewhere (musl, macOS) these calls do nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("edged.heap")

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters, from glibc's malloc.h
ARENAS = 2
MMAP_THRESHOLD = 32 << 20  # blocks this large (ONNX Runtime's arena chunks) get pages of their own


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
