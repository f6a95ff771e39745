"""A lean HTTP/1.1 load generator for ``benchmarks/serve.py``, run as its own process so the
clients do not share the server's interpreter (or its GIL).

``clients`` asyncio connections (keep-alive, one request in flight each) post prepared request
bodies round-robin to ``POST /v1/predict`` until ``requests`` have been answered. It writes raw
request bytes and reads the status line, ``Content-Length`` and body, nothing more, so the
client's own CPU per request is a few tens of microseconds (it reports its CPU seconds beside the
wall seconds, so the reader sees how much of the machine the load generator took).

    python benchmarks/serve_load.py URL BODIES.npz CLIENTS REQUESTS   # prints one JSON object

``BODIES.npz`` holds the request bodies as uint8 arrays and their media type as ``content_type``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import numpy as np


def _request(host: str, port: int, body: bytes, content_type: str) -> bytes:
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


async def load(url: str, bodies: list[bytes], content_type: str, clients: int, requests: int) -> dict[str, object]:
    """Latencies and status counts of ``requests`` requests from ``clients`` connections."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    prepared = [_request(host, port, body, content_type) for body in bodies]
    latencies: list[float] = []
    codes: dict[int, int] = {}
    counter = iter(range(requests))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                start = time.perf_counter()
                writer.write(prepared[i % len(prepared)])
                status = await _read_answer(reader)
                latencies.append(time.perf_counter() - start)
                codes[status] = codes.get(status, 0) + 1
        finally:
            writer.close()

    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"seconds": seconds, "client_cpu_s": time.process_time() - cpu, "codes": codes,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    url, bodies_file, clients, requests = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with np.load(bodies_file, allow_pickle=False) as stored:
        content_type = str(stored["content_type"])
        bodies = [stored[name].tobytes() for name in sorted(stored.files) if name.startswith("body")]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(load(url, bodies, content_type, clients, requests))))


if __name__ == "__main__":
    main()
