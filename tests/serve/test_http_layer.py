"""The HTTP layer of a real server, from raw sockets on 127.0.0.1: malformed HTTP is a JSON 400, a bounded
slow-loris (half-sent headers, dribbling bodies, idle connections) is cut off at the read and keep-alive
timeouts while the server keeps answering, and connections past the cap get 503 with Retry-After.

Everything is bounded: at most ~50 sockets, each read with a timeout, the whole module in ~20 s."""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import pytest
from serve_helpers import FAST, ServerProcess

from densepure.serve.http11 import LINGER_S as LINGER

READ_TIMEOUT, KEEP_ALIVE, MAX_CONNECTIONS = 2.0, 1.0, 48
INFER = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\n"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("guarded"), *FAST, "--read-timeout", str(READ_TIMEOUT),
                         "--keep-alive-timeout", str(KEEP_ALIVE), "--max-connections", str(MAX_CONNECTIONS))
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def connect(server, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def read_all(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (True), or until ``timeout`` (False)."""
    deadline, data = time.monotonic() + timeout, b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def parse(response: bytes) -> tuple[int, dict, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def health_latency(server) -> float:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data, closed = read_all(sock, 5)
    assert closed and parse(data)[0] == 200, data[:200]
    return time.monotonic() - start


@pytest.mark.parametrize("request_bytes,status,word", [
    (b"GARBAGE\r\n\r\n", 400, "illegal request line"),
    (b"GET /v2/health/live HTTP/1.1\r\nHost t\r\n\r\n", 400, "illegal header line"),
    (INFER + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "illegal chunk header"),
    (INFER + b"Content-Length: -5\r\n\r\n", 400, "Content-Length"),
    (b"GET /v2/health/live HTTP/1.1\r\n\r\n", 400, "Host"),
    (b"GET /v2/health/live HTTP/1.1\r\nX: " + b"a" * 20_000, 431, "too long"),  # headers past h11's 16 KiB
], ids=["request line", "header without colon", "chunk size", "negative content-length", "no host", "huge header"])
def test_malformed_http_is_a_json_error_and_the_connection_closes(guarded, request_bytes, status, word):
    with connect(guarded, request_bytes) as sock:
        data, closed = read_all(sock, 5)
    got, headers, body = parse(data)
    assert (got, closed) == (status, True) and headers["content-type"] == "application/json"
    assert body["error"].startswith("malformed HTTP request: ") and word in body["error"], body
    assert guarded.metric("densepure_http_refused_total", 'reason="malformed"') >= 1


def dribble(sock: socket.socket, stop: threading.Event) -> None:
    while not stop.wait(0.4):
        try:
            sock.sendall(b"x")
        except OSError:
            return


def test_a_slow_loris_is_cut_off_and_the_server_stays_responsive(guarded):
    half = [connect(guarded, INFER) for _ in range(36)]  # request line and part of the headers, then nothing
    slow = [connect(guarded, INFER + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            for _ in range(4)]  # a body that dribbles in a byte every 0.4 s, forever
    idle = connect(guarded)  # connects and sends nothing
    stop, started = threading.Event(), time.monotonic()
    threads = [threading.Thread(target=dribble, args=(sock, stop), daemon=True) for sock in slow]
    try:
        for t in threads:
            t.start()
        assert max(health_latency(guarded) for _ in range(3)) < 1.0  # 41 hostile connections: still answering
        idle_data, idle_closed = read_all(idle, KEEP_ALIVE + 2)
        assert idle_closed and idle_data == b""  # closed at the keep-alive timeout, nothing said
        answers = [read_all(sock, READ_TIMEOUT + 4) for sock in half + slow]
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for sock in [*half, *slow, idle]:
            sock.close()
    for data, closed in answers:
        status, headers, body = parse(data)
        assert (status, closed, headers["connection"]) == (408, True, "close"), data[:300]
        assert "--read-timeout" in body["error"]
    assert elapsed < READ_TIMEOUT + 3  # every one closed at the read timeout (plus the app's 1 s to answer)
    assert guarded.metric("densepure_http_refused_total", 'reason="read_timeout"') >= 36  # the 4 bodies: the app's 408
    assert health_latency(guarded) < 1.0


def test_connections_past_the_cap_get_503_with_retry_after(guarded):
    socks = [connect(guarded, INFER) for _ in range(MAX_CONNECTIONS + 4)]  # each holds a connection (2 s)
    try:
        time.sleep(0.5)
        answered, _, _ = select.select(socks, [], [], 0)  # the refused are answered at once, the others wait
        assert 4 <= len(answered) <= 6  # past the cap (this module's own keep-alive client may hold one more)
        for sock in answered:
            data, closed = read_all(sock, LINGER + 1)
            status, headers, body = parse(data)
            assert (status, headers["retry-after"], headers["connection"], closed) == (503, "1", "close", True)
            assert "--max-connections" in body["error"]
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + READ_TIMEOUT + 3
    while guarded.metric("densepure_http_refused_total", 'reason="connection_limit"') < 4:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # the closed sockets' connections leave the server's set
    assert health_latency(guarded) < 1.0
