"""A real HTTP server on 127.0.0.1 serving bytes from memory, for download tests (no network).

Usage (tests/ is on ``sys.path`` under pytest, so a plain import works)::

    from httpserver import FileServer

    with FileServer() as srv:
        route = srv.add("/weights.pt", data)                 # a good file, Range supported
        bad = srv.add("/flaky.bin", data, fail_first=[500])  # 500 once, then the file
        url = srv.url("/weights.pt")
        ...
        assert len(route.requests) == 1                      # headers of each request received

Each :class:`Route` can also ignore ``Range`` (``ranges=False``), always answer an error status
(``status=404``), close the connection after ``cut_after`` body bytes on its first
``cut_requests`` requests (``None``: every request), or wait ``delay`` seconds before answering its
first ``delay_requests`` requests. Route fields may be changed while the server runs.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What the server answers for one path, and a log of what it was asked."""

    data: bytes = b""
    status: int = 200
    ranges: bool = True
    fail_first: list[int] = field(default_factory=list)
    cut_after: int | None = None
    cut_requests: int | None = None
    delay: float = 0.0
    delay_requests: int | None = 1
    requests: list[dict[str, str]] = field(default_factory=list)
    bytes_sent: int = 0
    _cuts: int = 0

    def range_headers(self) -> list[str | None]:
        """The ``Range`` header of each request received (None where absent)."""
        return [h.get("Range") for h in self.requests]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for handlers still sleeping in a ``delay``


class FileServer:
    """Serve :class:`Route` objects on a free port of 127.0.0.1 from a background thread."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes = b"", **kwargs) -> Route:
        """Serve ``data`` at ``path`` with the behaviour given by :class:`Route`'s fields."""
        route = Route(data=data, **kwargs)
        self.routes[path] = route
        return route

    def start(self) -> FileServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args) -> None:  # noqa: A002 - keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self.send_error(404)
                    return
                with server._lock:
                    n = len(route.requests)
                    route.requests.append(dict(self.headers.items()))
                if route.delay and (route.delay_requests is None or n < route.delay_requests):
                    time.sleep(route.delay)
                if n < len(route.fail_first):
                    self.send_error(route.fail_first[n])
                    return
                if route.status != 200:
                    self.send_error(route.status)
                    return
                self._send_body(route)

            def _send_body(self, route: Route) -> None:
                data = route.data
                m = re.match(r"^bytes=(\d+)-(\d*)$", self.headers.get("Range", "").strip())
                if route.ranges and m:
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else len(data) - 1
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    end = min(end, len(data) - 1)
                    body = data[start : end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                if route.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = False
                with server._lock:
                    if route.cut_after is not None and (
                        route.cut_requests is None or route._cuts < route.cut_requests
                    ):
                        route._cuts += 1
                        cut = True
                if cut:
                    body = body[: route.cut_after]
                # Count before writing: the client may have read the whole body and returned
                # before this thread runs again, so counting afterwards races with the test.
                with server._lock:
                    route.bytes_sent += len(body)
                self.wfile.write(body)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        return Handler


def free_port() -> int:
    """A port on 127.0.0.1 with (momentarily) nothing listening: for 'unreachable' tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
