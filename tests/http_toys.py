"""A real local HTTP server for black-box target tests: 127.0.0.1, a free port, a thread, a
scripted behaviour per request (status, body, stall), and a bound on the requests it serves."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from torch import nn

#: handler(server, body, content_type) -> (status, bytes body, seconds to stall first)
Behaviour = Callable[["Server", bytes, str], tuple[int, bytes, float]]


def serve_model(model: nn.Module) -> Behaviour:
    """The ``hardened serve`` API over ``model``: labels and probabilities."""

    def behaviour(httpd: Server, body: bytes, content_type: str) -> tuple[int, bytes, float]:
        images = torch.tensor(json.loads(body)["images"], dtype=torch.float32)
        with torch.no_grad():
            probabilities = model(images).softmax(1)
        predictions = [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in probabilities]
        return 200, json.dumps({"predictions": predictions}).encode(), 0.0

    return behaviour


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.requests = 0
        self.bodies: list[tuple[bytes, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        self.server.requests += 1
        assert self.server.requests <= 500, "the client sent an unbounded number of requests"
        body = self.rfile.read(int(self.headers["Content-Length"]))
        content_type = self.headers["Content-Type"]
        self.server.bodies.append((body, content_type))
        status, answer, stall = self.server.behaviour(self.server, body, content_type)
        if stall:
            time.sleep(stall)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def server(behaviour: Behaviour) -> Iterator[Server]:
    httpd = Server(behaviour)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
