"""Run an ASGI app on a real loopback port in a background thread, for tests over real HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refusing_port():
    """A loopback port that refuses connections while the block runs: bound, never listening. A port
    from free_port() is free only when asked; a server started later (free_port() may hand out the same
    number again) could answer on it, as one did in CI."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@contextlib.contextmanager
def running(app, port: int | None = None):
    """Yields the base URL ('http://127.0.0.1:PORT') while the app serves; stops it afterwards."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def server_process(args: list[str], log_path, timeout_s: float = 300):
    """Start an OpenAI-compatible server (`args`, listening on loopback), wait until GET /v1/models
    answers, and yield its base URL ('http://127.0.0.1:PORT/v1'); terminate it afterwards. `args` holds
    '{port}', replaced by a free port. A server that exits or never answers fails with its log."""
    import subprocess

    import httpx

    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen([a.replace("{port}", str(port)) for a in args], stdout=log,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[:3]} {'exited' if process.poll() is not None else 'did not start'}: "
                                   f"{Path(log_path).read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
