"""The remote model update's download step, against a real HTTP server on a loopback port.

The server misbehaves on demand: it dies mid-body, ignores ``Range``, lies about the size, stalls,
answers 404 or redirects to ``file://``; every request it sees is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edged.remote.download import ATTEMPTS, DownloadError, fetch_model, model_file

PAYLOAD = random.Random(20261125).randbytes(300_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class Seen:
    path: str
    range: str | None
    authorization: str | None
    status: int = 0


@dataclass
class Behaviour:
    honour_range: bool = True
    die_first: int = 0  # this many requests for /model die half-way through the body
    die_with_reset: bool = False  # die with a TCP reset rather than a clean close
    requests: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)  # ends a stalled response


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        behaviour = self.server.behaviour
        seen = Seen(self.path, self.headers.get("Range"), self.headers.get("Authorization"))
        behaviour.requests.append(seen)
        try:
            self.route(behaviour, seen)
        except OSError:
            pass  # the client hung up first (a refused size); nothing to answer

    def route(self, behaviour: Behaviour, seen: Seen) -> None:
        if self.path in ("/model", "/v2/shapes-v2.onnx"):
            self.model(behaviour, seen)
        elif self.path == "/redirect-model":
            self.answer(seen, 302, {"Location": "/model"})
        elif self.path == "/redirect-file":
            self.answer(seen, 302, {"Location": "file:///etc/passwd"})
        elif self.path == "/redirect-ftp":
            self.answer(seen, 301, {"Location": f"ftp://127.0.0.1:{self.server.server_port}/model"})
        elif self.path == "/huge":
            self.answer(seen, 200, {"Content-Length": str(10 * len(PAYLOAD))})
        elif self.path == "/endless":
            self.answer(seen, 200, {})  # HTTP/1.0 without Content-Length: the body ends when the server closes
            for _ in range(100):
                self.wfile.write(PAYLOAD[:10_000])
        elif self.path == "/stall":
            self.answer(seen, 200, {"Content-Length": str(len(PAYLOAD))})
            self.wfile.write(PAYLOAD[:1000])
            behaviour.release.wait(5)
        else:
            self.answer(seen, 404, {"Content-Length": "0"})

    def answer(self, seen: Seen, status: int, headers: dict[str, str]) -> None:
        seen.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def model(self, behaviour: Behaviour, seen: Seen) -> None:
        start = 0
        if seen.range is not None and behaviour.honour_range:
            start = int(seen.range.removeprefix("bytes=").removesuffix("-"))
            if start >= len(PAYLOAD):
                self.answer(seen, 416, {"Content-Range": f"bytes */{len(PAYLOAD)}", "Content-Length": "0"})
                return
            self.answer(seen, 206, {"Content-Range": f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}",
                                    "Content-Length": str(len(PAYLOAD) - start)})
        else:
            self.answer(seen, 200, {"Content-Length": str(len(PAYLOAD))})
        body = PAYLOAD[start:]
        if sum(r.path == seen.path for r in behaviour.requests) > behaviour.die_first:
            self.wfile.write(body)
            return
        self.wfile.write(body[:len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        if behaviour.die_with_reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            self.connection.shutdown(socket.SHUT_WR)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server_port}{path}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a socket this test closed on purpose


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.behaviour = Behaviour()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd
    httpd.behaviour.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def leftovers(state: Path) -> list[str]:
    folder = model_file(state, SHA256).parent
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def part_of(state: Path) -> Path:
    final = model_file(state, SHA256)
    return final.with_name(final.name + ".part")


def test_downloads_verifies_and_then_reuses_the_file(server: Server, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[int, int | None]] = []
    with caplog.at_level(logging.INFO, logger="edged.remote"):
        path = fetch_model(server.url("/model"), SHA256.upper(), tmp_path,
                           progress=lambda done, total: calls.append((done, total)))
    assert path == model_file(tmp_path, SHA256, server.url("/model")) == tmp_path / "models" / SHA256 / "model.onnx"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == [path.name]
    assert [r.range for r in server.behaviour.requests] == [None]
    # At most one call per 10 % step, rising, the last one at the whole file.
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(calls) <= 11
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert any("MB (100 %)" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edged.remote"):
        again = fetch_model(server.url("/model"), SHA256, tmp_path)
    assert again == path
    assert len(server.behaviour.requests) == 1
    assert f"model {SHA256[:12]} already present" in caplog.messages


def test_a_tampered_model_file_is_downloaded_again(server: Server, tmp_path: Path) -> None:
    final = model_file(tmp_path, SHA256)
    final.parent.mkdir(parents=True)
    final.write_bytes(b"not the model")
    assert fetch_model(server.url("/model"), SHA256, tmp_path).read_bytes() == PAYLOAD
    assert len(server.behaviour.requests) == 1


def test_wrong_sha256_leaves_nothing(server: Server, tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"another model").hexdigest()
    with pytest.raises(DownloadError, match="sha256 mismatch") as error:
        fetch_model(server.url("/model"), wrong, tmp_path)
    assert f"expected {wrong[:12]}" in str(error.value) and f"got {SHA256[:12]}" in str(error.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_dropped_connection_resumes_with_range(server: Server, tmp_path: Path, reset: bool) -> None:
    server.behaviour.die_first, server.behaviour.die_with_reset = 1, reset
    path = fetch_model(server.url("/model"), SHA256, tmp_path)
    assert path.read_bytes() == PAYLOAD
    first, second = server.behaviour.requests
    assert first.range is None and second.status == 206
    resumed_at = int(second.range.removeprefix("bytes=").removesuffix("-"))
    if reset:  # a reset may discard what was still in flight
        assert 0 < resumed_at <= len(PAYLOAD) // 2
    else:
        assert resumed_at == len(PAYLOAD) // 2
    assert leftovers(tmp_path) == [path.name]


def test_a_connection_that_keeps_dropping_fails_after_the_last_attempt(server: Server, tmp_path: Path) -> None:
    server.behaviour.die_first = 1000
    with pytest.raises(DownloadError, match=f"dropped {ATTEMPTS} times") as error:
        fetch_model(server.url("/model"), SHA256, tmp_path)
    assert len(server.behaviour.requests) == ATTEMPTS == 3
    part = part_of(tmp_path)
    # Each attempt resumed and got half of what was left: 1/2, 3/4, 7/8.
    assert part.stat().st_size == len(PAYLOAD) - len(PAYLOAD) // 8
    assert f"{part.stat().st_size} of {len(PAYLOAD)} bytes arrived" in str(error.value)
    assert leftovers(tmp_path) == [part.name]  # kept for the next update to resume

    # The next update resumes from there.
    kept = part.stat().st_size
    server.behaviour.die_first = 0
    assert fetch_model(server.url("/model"), SHA256, tmp_path).read_bytes() == PAYLOAD
    assert (server.behaviour.requests[-1].range, server.behaviour.requests[-1].status) == (f"bytes={kept}-", 206)


def test_a_server_ignoring_range_starts_over(server: Server, tmp_path: Path) -> None:
    server.behaviour.honour_range = False
    part = part_of(tmp_path)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # not a prefix of the payload: appending to it would fail the hash
    path = fetch_model(server.url("/model"), SHA256, tmp_path)
    assert path.read_bytes() == PAYLOAD
    [seen] = server.behaviour.requests
    assert seen.range == "bytes=1000-" and seen.status == 200
    assert leftovers(tmp_path) == [path.name]


def test_a_complete_leftover_part_is_verified_and_installed(server: Server, tmp_path: Path) -> None:
    part = part_of(tmp_path)
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)  # the rename never happened
    assert fetch_model(server.url("/model"), SHA256, tmp_path).read_bytes() == PAYLOAD
    assert [(r.range, r.status) for r in server.behaviour.requests] == [(f"bytes={len(PAYLOAD)}-", 416)]


def test_a_content_length_over_the_limit_is_refused(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=f"{len(PAYLOAD)} bytes, more than the limit of {len(PAYLOAD) - 1}"):
        fetch_model(server.url("/model"), SHA256, tmp_path, max_bytes=len(PAYLOAD) - 1)
    with pytest.raises(DownloadError, match="more than the limit"):
        fetch_model(server.url("/huge"), SHA256, tmp_path, max_bytes=len(PAYLOAD))
    assert leftovers(tmp_path) == []


def test_a_server_streaming_past_the_limit_is_cut_off(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="more than the limit of 50000 bytes arrived"):
        fetch_model(server.url("/endless"), SHA256, tmp_path, max_bytes=50_000)
    assert leftovers(tmp_path) == []


def test_http_errors_name_the_status(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404") as error:
        fetch_model(server.url("/missing"), SHA256, tmp_path)
    assert server.url("/missing") in str(error.value)
    assert not model_file(tmp_path, SHA256).exists()


def test_redirects_are_followed_to_http_only(server: Server, tmp_path: Path) -> None:
    for path, scheme in (("/redirect-file", "file://"), ("/redirect-ftp", "ftp://")):
        with pytest.raises(DownloadError, match=f"redirect to {scheme}.* refused"):
            fetch_model(server.url(path), SHA256, tmp_path)
    assert [r.path for r in server.behaviour.requests] == ["/redirect-file", "/redirect-ftp"]
    assert fetch_model(server.url("/redirect-model"), SHA256, tmp_path).read_bytes() == PAYLOAD


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1:{port}/model", "http:///model",
                                 "127.0.0.1:{port}/model"])
def test_only_http_urls_are_fetched(server: Server, tmp_path: Path, url: str) -> None:
    with pytest.raises(DownloadError, match="not an http:// or https:// URL"):
        fetch_model(url.format(port=server.server_port), SHA256, tmp_path)
    assert server.behaviour.requests == []
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sha256", ["", SHA256[:63], SHA256[:63] + "g", "../" * 21 + "x"])
def test_a_malformed_hash_is_refused(server: Server, tmp_path: Path, sha256: str) -> None:
    with pytest.raises(DownloadError, match="expected 64 hex digits"):
        fetch_model(server.url("/model"), sha256, tmp_path)
    assert server.behaviour.requests == []


def test_credentials_are_sent_but_never_shown(server: Server, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="edged.remote"), pytest.raises(DownloadError) as error:
        fetch_model(server.url("/missing", "edge:s3cr%40t@"), SHA256, tmp_path)
    assert "s3cr" not in str(error.value) and "***@127.0.0.1" in str(error.value)
    assert "s3cr" not in caplog.text
    [seen] = server.behaviour.requests
    assert base64.b64decode(seen.authorization.removeprefix("Basic ")) == b"edge:s3cr@t"

    # Refused before any request, too.
    with pytest.raises(DownloadError) as error:
        fetch_model("ftp://edge:s3cret@127.0.0.1/model", SHA256, tmp_path)
    assert "s3cret" not in str(error.value)

    # The credentials are not sent on to where a redirect leads.
    assert fetch_model(server.url("/redirect-model", "edge:s3cret@"), SHA256, tmp_path).read_bytes() == PAYLOAD
    assert [r.authorization is None for r in server.behaviour.requests[1:]] == [False, True]


def test_a_stalled_read_times_out(server: Server, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DownloadError, match="read timed out"):
        fetch_model(server.url("/stall"), SHA256, tmp_path, timeout_s=0.2)
    assert time.monotonic() - started < 5
    assert len(server.behaviour.requests) == ATTEMPTS
    assert not model_file(tmp_path, SHA256).exists()


def test_a_model_keeps_the_name_its_url_gives_it(server: Server, tmp_path: Path) -> None:
    """Detections name the model by its file name: the URL's, under a folder named by the hash."""
    assert fetch_model(server.url("/v2/shapes-v2.onnx"), SHA256, tmp_path) == \
        tmp_path / "models" / SHA256 / "shapes-v2.onnx"
    assert model_file(tmp_path, SHA256, "https://h/x/../odd name.onnx?x=1").name == "model.onnx"
