"""The real server (uvicorn) in a background thread on a free loopback port: for the bench and
the tests, which talk to it over real HTTP and WebSocket connections."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn

from .app import create_app
from .settings import Settings


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


class BackgroundServer:
    """`with BackgroundServer(settings) as srv:` serves until the block ends; `srv.base_url`."""

    def __init__(self, settings: Settings, model=None, ready_timeout_s: float = 180.0):
        self.settings = settings
        self.app = create_app(settings, model=model)
        self.ready_timeout_s = ready_timeout_s
        self._sock = free_socket()
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", ws_max_size=settings.max_body_bytes, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/chat/ws"

    def start(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while True:  # bounded wait on a condition: /ready turns 200 after load and warm-up
            try:
                if httpx.get(self.base_url + "/ready", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the server did not become ready: {self.app.state.host.error}")
            time.sleep(0.1)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
