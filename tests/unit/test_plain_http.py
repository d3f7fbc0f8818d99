"""plain_http.py against a real socket server on 127.0.0.1: connections kept alive and reused,
one the server closed never reused, answers read whole (Content-Length or chunked) with a beat
per part, and each failure the httpx exception whose meaning answers.py relies on (connect
errors: never sent; after sending: may have arrived)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from support import wait_for

from cdc_daemon.typesense.plain_http import PlainHttp

HEADERS = {"Content-Type": "application/json", "X-TYPESENSE-API-KEY": "k"}
Answer = Callable[[socket.socket, int], bool]  # (connection, request number) → keep it open


def ok(body: bytes = b'{"ok":true}') -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class Server:
    """Accepts connections; reads each request (head and Content-Length body), records its
    connection number and request line, then `answer` writes the answer."""

    def __init__(self, answer: Answer, read_body: bool = True) -> None:
        self.answer = answer
        self.read_body = read_body  # False: `answer` gets the connection before the body
        self.listener = socket.socket()
        # A small receive window: a body is not taken much faster than `answer` reads it.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2**16)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen: list[tuple[int, str, dict[str, str], bytes]] = []
        self.connections = 0
        self.closed = 0  # connections this server has closed
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        # Unbuffered: an answer may read the rest itself. Closed with the socket (else the
        # socket stays open while the reader refers to it).
        with conn, conn.makefile("rb", buffering=0) as reader:
            while True:
                line = reader.readline()
                if not line:
                    return
                headers = {}
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", 0)) if self.read_body else 0
                body = b""
                while len(body) < length and (part := reader.read(length - len(body))):
                    body += part
                self.seen.append((number, line.decode().strip(), headers, body))
                if not self.answer(conn, len(self.seen)):
                    break
        self.closed += 1

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(answer: Answer, read_body: bool = True) -> Server:
        servers.append(Server(answer, read_body))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_connections_are_kept_alive_and_reused(serve: Callable[..., Server]) -> None:
    server = serve(lambda conn, _n: conn.sendall(ok()) is None)
    plain = PlainHttp(5, 5)
    for i in range(3):
        response = plain.request("POST", server.url, f"/x/{i}", HEADERS, b"[1]")
        assert (response.status_code, response.json()) == (200, {"ok": True})
    assert server.connections == 1
    assert [line for _c, line, _h, _b in server.seen] == [f"POST /x/{i} HTTP/1.1" for i in range(3)]
    assert server.seen[0][2]["content-length"] == "3" and server.seen[0][3] == b"[1]"
    assert server.seen[0][2]["x-typesense-api-key"] == "k"
    assert server.seen[0][2]["accept-encoding"] == "identity"  # no gzip to undo
    plain.close()


def test_a_connection_the_server_closed_while_idle_is_not_used_again(
    serve: Callable[..., Server]
) -> None:
    server = serve(lambda conn, _n: conn.sendall(ok()) and False)  # answers, then hangs up
    plain = PlainHttp(5, 5)
    first = plain.request("GET", server.url, "/a", HEADERS)
    wait_for(lambda: server.closed == 1, 10, message="the server's hang-up")
    second = plain.request("GET", server.url, "/b", HEADERS)
    assert (first.status_code, second.status_code) == (200, 200)
    assert [c for c, _l, _h, _b in server.seen] == [1, 2]


def test_a_chunked_answer_is_read_whole_with_a_beat_for_each_part(
    serve: Callable[..., Server]
) -> None:
    parts = [b'{"success":true}\n' * 3000, b'{"success":true}', b""]

    def chunked(conn: socket.socket, _n: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.05)
        return True

    server = serve(chunked)
    beats: list[float] = []
    plain = PlainHttp(5, 5, beat=lambda: beats.append(time.monotonic()))
    response = plain.request("POST", server.url, "/import", HEADERS, "{}")
    assert response.text == b"".join(parts).decode()
    assert len(beats) >= 4  # before sending, at the head, and for each part of the body
    assert plain.request("GET", server.url, "/again", HEADERS).status_code == 200
    assert server.connections == 1  # read to its end: the connection takes the next request


def test_the_path_prefix_of_a_node_and_the_query_parameters(
    serve: Callable[..., Server]
) -> None:
    server = serve(lambda conn, _n: conn.sendall(ok()) is None)
    plain = PlainHttp(5, 5)
    params: dict[str, str | int] = {"filter_by": "id:[`a b`,`ü&`]", "batch_size": 2}
    plain.request("DELETE", server.url + "/ts/", "/collections/c/documents", HEADERS, None, params)
    expected = httpx.URL("http://h/ts/collections/c/documents", params=params).raw_path.decode()
    assert server.seen[0][1] == f"DELETE {expected} HTTP/1.1"  # as httpx would have sent it


def test_failures_are_httpx_errors_that_say_whether_the_request_left(
    serve: Callable[..., Server]
) -> None:
    refused = socket.create_server(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()  # nothing listens there now
    plain = PlainHttp(0.5, 0.5)
    with pytest.raises(httpx.ConnectError):
        plain.request("POST", f"http://127.0.0.1:{port}", "/import", HEADERS, b"{}")

    hangs_up = serve(lambda _conn, _n: False)  # reads the request, closes without answering
    with pytest.raises(httpx.RemoteProtocolError):
        plain.request("POST", hangs_up.url, "/import", HEADERS, b"{}")

    told = threading.Event()  # the silent server answers nothing until the timeout was seen
    silent = serve(lambda _conn, _n: told.wait(30) or True)
    with pytest.raises(httpx.ReadTimeout):
        plain.request("POST", silent.url, "/import", HEADERS, b"{}")
    told.set()

    cut = serve(lambda conn, _n: conn.sendall(ok(b"x" * 100)[:-50]) and False)
    with pytest.raises(httpx.RemoteProtocolError):
        plain.request("GET", cut.url, "/collections", HEADERS)


def test_nodes_behind_an_environment_proxy_and_https_nodes_are_left_to_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert PlainHttp(5, 5).handles("http://127.0.0.1:8108")
    assert not PlainHttp(5, 5).handles("https://127.0.0.1:8108")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert not PlainHttp(5, 5).handles("http://127.0.0.1:8108")  # httpx applies its own rules


def test_a_big_body_to_a_slow_reader_is_bounded_per_part_not_in_all(
    serve: Callable[..., Server]
) -> None:
    """The timeout bounds each send, as httpx's does: a big import to a node that keeps
    reading slowly goes on (one bound for the whole body failed it, and re-sent it forever)."""

    def slow_reader(conn: socket.socket, _n: int) -> bool:  # 16 MiB/s: a second for the body
        size, taken, began = 2**24, 0, time.monotonic()
        while taken < size:
            taken += len(conn.recv(min(size - taken, 2**16)))
            time.sleep(max(0.0, began + taken / 2**24 - time.monotonic()))
        conn.sendall(ok())
        return True

    server = serve(slow_reader, read_body=False)
    started = time.monotonic()
    response = PlainHttp(0.5, 0.5).request("POST", server.url, "/import", HEADERS, b"x" * 2**24)
    assert response.status_code == 200 and time.monotonic() - started > 0.5


def test_an_answer_sent_before_the_body_was_read_is_the_answer(
    serve: Callable[..., Server]
) -> None:
    """A refused key can be answered at once, then the connection closed: that 401 is what the
    request gets (the key is fetched again), not a failed write."""
    refused = b'HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}'
    server = serve(lambda conn, _n: conn.sendall(refused) and False, read_body=False)
    response = PlainHttp(5, 5).request("POST", server.url, "/import", HEADERS, b"x" * 2**24)
    assert response.status_code == 401


def test_an_informational_answer_is_an_error_not_the_next_requests_answer(
    serve: Callable[..., Server]
) -> None:
    def early_hints(conn: socket.socket, n: int) -> bool:
        if n == 1:
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\n\r\n")
            time.sleep(0.05)
        conn.sendall(ok(b'{"answer_to":%d}' % n))
        return True

    server = serve(early_hints)
    plain = PlainHttp(5, 5)
    with pytest.raises(httpx.RemoteProtocolError):
        plain.request("GET", server.url, "/first", HEADERS)
    assert plain.request("GET", server.url, "/second", HEADERS).json() == {"answer_to": 2}


def test_credentials_in_a_node_url_are_left_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not PlainHttp(5, 5).handles("http://user:pw@127.0.0.1:8108")  # Basic auth
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:3128")
    assert not PlainHttp(5, 5).handles("http://127.0.0.1:8108")
