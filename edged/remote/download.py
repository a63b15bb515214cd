"""The download step of a remote model update: fetch a model over HTTP(S) into the state folder, by its SHA-256.

A model is named by its hash, so a file already there is reused without a request, and nothing is ever
installed under that name without matching it. Edge links drop: the bytes go to ``<hash>.onnx.part``, and
a dropped transfer resumes from there with a ``Range`` request, now or on the next update, rather than
fetching up to 1 GiB again. The size limit is checked against the headers and again against the bytes
that arrive, so a server that lies about (or omits) its length cannot fill the disk. Only the standard
library's urllib is used: an edge install carries no HTTP client of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from edged import __version__
from edged.errors import EdgedError
from edged.specs import redact

log = logging.getLogger("edged.remote")

MAX_MODEL_BYTES = 1 << 30  # 1 GiB: a bigger file is refused (Content-Length checked first, bytes counted while reading)
TIMEOUT_S = 30.0  # per socket operation (connect, each read)
ATTEMPTS = 3  # transfers in all, each resuming where the last one dropped
SCHEMES = ("http", "https")
READ_BYTES = 1 << 16
HASH_BYTES = 1 << 20
PROGRESS_STEP = 0.10  # of the total, between progress lines
PROGRESS_INTERVAL_S = 5.0  # between progress lines when the server gives no size

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)

Progress = Callable[[int, int | None], None]


class DownloadError(EdgedError):
    """A model could not be fetched or verified; the message names the URL (credentials redacted) and why."""


class _Dropped(Exception):
    """A transfer that ended early; the bytes received so far are in the .part file, for the next attempt."""

    def __init__(self, reason: str, received: int, total: int | None):
        super().__init__(reason)
        self.reason, self.received, self.total = reason, received, total


_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.onnx")


def _hash(sha256: str) -> str:
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise DownloadError(f"model sha256 {sha256!r}: expected 64 hex digits")
    return sha256.lower()


def model_file(state_dir: Path, sha256: str, url: str = "") -> Path:
    """Where the model with this hash lives: ``state_dir/models/<sha256>/<the URL's file name>``, so that the
    model keeps its name (detections carry it) and two versions of one name do not clash. A URL whose path
    does not end in a plain ``NAME.onnx`` gives ``model.onnx``.

    DownloadError if ``sha256`` is not 64 hex digits (it names a folder, so it must not name a path)."""
    name = urlsplit(url).path.rpartition("/")[2] if url else ""
    if not _FILE_NAME.fullmatch(name):
        name = "model.onnx"
    return Path(state_dir) / "models" / _hash(sha256) / name


def fetch_model(url: str, sha256: str, state_dir: Path, *, max_bytes: int = MAX_MODEL_BYTES,
                timeout_s: float = TIMEOUT_S, progress: Progress | None = None) -> Path:
    """Download url into model_file(state_dir, sha256) and return that path.

    A file already there with this hash is returned without a request. Otherwise the bytes go to
    ``<final>.part`` (resumed if an earlier attempt left one), a dropped connection is resumed up to
    ``ATTEMPTS`` transfers in all, and the file is renamed into place only once its SHA-256 matches.
    ``progress(bytes_so_far, total_or_None)`` is called with each progress log line (at most every 10 %,
    or 5 s when the size is unknown); an exception it raises abandons the download, keeping the .part.
    DownloadError names the URL (credentials redacted) and what failed; a .part is kept for resuming
    after a dropped connection or an HTTP error, and deleted when its content is refused.
    """
    shown = redact(url)
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
    except ValueError as exc:
        raise DownloadError(f"{shown}: not a valid URL ({exc})") from None
    if scheme not in SCHEMES or not host:
        raise DownloadError(f"{shown}: not an http:// or https:// URL; models are fetched only over HTTP(S)")
    expected = _hash(sha256)
    final = model_file(state_dir, expected, url)
    label = expected[:12]

    if final.is_file():
        if _file_sha256(final, shown) == expected:
            log.info("model %s already present", label)
            return final
        log.warning("model %s: %s does not match its hash; downloading it again", label, final)
        _discard(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{shown}: cannot create {final.parent}: {exc.strerror}") from None
    part = final.with_name(final.name + ".part")

    # Credentials go in a header that urllib drops on a redirect, so another host never sees them.
    netloc = parts.netloc.rpartition("@")[2]
    request_url = urlunsplit(parts._replace(netloc=netloc))
    authorization = None
    if "@" in parts.netloc:
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")

    log.info("downloading model %s from %s", label, shown)
    opener = urllib.request.build_opener(_HttpOnlyRedirects(shown))
    meter = _Meter(label, progress)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _transfer(opener, request_url, authorization, part, shown, max_bytes, timeout_s, meter)
            break
        except _Dropped as exc:
            dropped = exc
            log.warning("model %s: transfer %d of %d dropped after %d bytes (%s)", label, attempt, ATTEMPTS,
                        exc.received, exc.reason)
    else:
        of = f" of {dropped.total}" if dropped.total is not None else ""
        raise DownloadError(f"{shown}: connection dropped {ATTEMPTS} times; {dropped.received}{of} bytes arrived "
                            f"(last: {dropped.reason}); {part.name} is kept to resume from")
    _install(part, final, expected, shown)
    log.info("model %s downloaded and verified: %s", label, final)
    return final


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only: urllib's own handler also follows ftp://."""

    def __init__(self, shown: str):
        self.shown = shown

    def http_error_302(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                       headers: Message) -> http.client.HTTPResponse | None:
        target = headers.get("Location") or headers.get("URI")
        if target is not None:
            target = urljoin(req.full_url, target)
            try:
                scheme = urlsplit(target).scheme.lower()
            except ValueError:
                scheme = ""
            if scheme not in SCHEMES:
                fp.close()
                raise DownloadError(f"{self.shown}: HTTP {code} redirect to {redact(target)} refused: "
                                    "models are fetched only over HTTP(S)")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _transfer(opener: urllib.request.OpenerDirector, url: str, authorization: str | None, part: Path, shown: str,
              max_bytes: int, timeout_s: float, meter: _Meter) -> None:
    """One request, appending to ``part`` (or rewriting it when the server cannot resume). Returns when the
    body is complete; _Dropped if the connection ends early, DownloadError for anything a retry won't fix."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"edged/{__version__}",
                                                   "Accept-Encoding": "identity"})
    if authorization is not None:
        request.add_unredirected_header("Authorization", authorization)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # The .part may already hold everything (a crash before the rename): then verify it as it is.
            unsatisfied = _UNSATISFIED_RANGE.fullmatch((exc.headers.get("Content-Range") or "").strip())
            if unsatisfied and int(unsatisfied[1]) == offset:
                return
            _discard(part)
            raise _Dropped(f"server cannot resume at byte {offset}; starting over", offset, None) from None
        raise DownloadError(f"{shown}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise DownloadError(f"{shown}: {reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(f"{shown}: {_describe(exc)}") from None

    with response:
        length = _int_or_none(response.headers.get("Content-Length"))
        if response.status == 206 and offset:
            content_range = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if content_range is None or int(content_range[1]) != offset:
                _discard(part)
                raise _Dropped(f"server answered Range: bytes={offset}- with Content-Range "
                               f"{response.headers.get('Content-Range')!r}; starting over", offset, None)
            total = int(content_range[3]) if content_range[3] != "*" else (
                offset + length if length is not None else None)
            log.info("model %s: resuming at %.1f MB", meter.label, offset / 1e6)
        elif response.status == 200:
            if offset:
                log.info("model %s: server ignores Range; starting over", meter.label)
            offset, total = 0, length
        else:
            raise DownloadError(f"{shown}: unexpected HTTP {response.status} {response.reason}")
        if total is not None and total > max_bytes:
            _discard(part)
            raise DownloadError(f"{shown}: {total} bytes, more than the limit of {max_bytes}")

        received, too_big = offset, False
        try:
            with open(part, "ab" if offset else "wb") as out:
                meter.start(received, total)
                while True:
                    try:
                        chunk = response.read(READ_BYTES)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Dropped(_describe(exc), received, total) from None
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > max_bytes:
                        too_big = True
                        break
                    out.write(chunk)
                    meter.update(received, total)
        except OSError as exc:
            _discard(part)
            raise DownloadError(f"{shown}: cannot write {part}: {exc.strerror or exc}") from None
    if too_big:
        _discard(part)
        raise DownloadError(f"{shown}: more than the limit of {max_bytes} bytes arrived; refused")
    if total is not None and received < total:
        raise _Dropped("connection closed early", received, total)
    meter.finish(received, total)


class _Meter:
    """Progress lines (and the caller's callback): every PROGRESS_STEP of the total, or PROGRESS_INTERVAL_S."""

    def __init__(self, label: str, callback: Progress | None):
        self.label, self.callback = label, callback
        self.next_fraction, self.last_time, self.last_reported = PROGRESS_STEP, 0.0, -1

    def start(self, received: int, total: int | None) -> None:
        self.last_time = time.monotonic()
        if total:
            self.next_fraction = self._step_after(received / total)

    def update(self, received: int, total: int | None) -> None:
        if total:
            fraction = received / total
            if fraction + 1e-9 < self.next_fraction:
                return
            self.next_fraction = self._step_after(fraction)
        elif time.monotonic() - self.last_time < PROGRESS_INTERVAL_S:
            return
        self.report(received, total)

    @staticmethod
    def _step_after(fraction: float) -> float:
        return (int(fraction / PROGRESS_STEP + 1e-9) + 1) * PROGRESS_STEP

    def finish(self, received: int, total: int | None) -> None:
        if received != self.last_reported:
            self.report(received, total)

    def report(self, received: int, total: int | None) -> None:
        self.last_time, self.last_reported = time.monotonic(), received
        if total:
            log.info("model %s: %.1f of %.1f MB (%d %%)", self.label, received / 1e6, total / 1e6,
                     100 * received // total)
        else:
            log.info("model %s: %.1f MB", self.label, received / 1e6)
        if self.callback is not None:
            self.callback(received, total)


def _install(part: Path, final: Path, expected: str, shown: str) -> None:
    """Rename ``part`` to ``final`` if its SHA-256 is ``expected``; otherwise delete it and raise."""
    actual = _file_sha256(part, shown)
    if not hmac.compare_digest(actual, expected):
        _discard(part)
        raise DownloadError(f"{shown}: sha256 mismatch: expected {expected[:12]}..., got {actual[:12]}...")
    try:
        with open(part, "rb") as written:
            os.fsync(written.fileno())
        os.replace(part, final)
    except OSError as exc:
        raise DownloadError(f"{shown}: cannot install {final}: {exc.strerror or exc}") from None
    # The rename is durable only once the folder is on disk; some filesystems refuse to fsync a folder.
    try:
        folder = os.open(final.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        log.debug("fsync of %s: %s", final.parent, exc)


def _file_sha256(path: Path, shown: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(HASH_BYTES):
                digest.update(chunk)
    except OSError as exc:
        raise DownloadError(f"{shown}: cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot delete %s: %s", path, exc.strerror or exc)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "read timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
