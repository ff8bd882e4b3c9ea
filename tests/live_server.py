"""The real server (uvicorn, tiny preset, CPU) on a free loopback port, once per session.

`live.settings(**changes)` overrides the `get_settings` dependency for the duration of a `with`
block (queue size, deadline, API keys, limits), so one loaded model serves every test.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from server.app import create_app
from server.settings import Settings, get_settings

READY_TIMEOUT_S = 180

@dataclass
class LiveServer:
    app: object
    base_url: str
    base_settings: Settings

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/chat/ws"

    @contextlib.contextmanager
    def settings(self, **changes):
        """Override the settings dependency for the block (routes and middlewares read it)."""
        changed = self.base_settings.model_copy(update=changes)
        self.app.dependency_overrides[get_settings] = lambda: changed
        try:
            yield changed
        finally:
            self.app.dependency_overrides.pop(get_settings, None)

    def metric(self, name: str, **labels) -> float:
        """One sample of /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(httpx.get(self.base_url + "/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == str(v) for k, v in labels.items()):
                    return sample.value
        return 0.0

    def scheduler_idle(self, timeout: float = 30.0) -> None:
        """Wait (bounded) until no request is in flight: a condition, not a fixed sleep."""
        deadline = time.monotonic() + timeout
        while self.app.state.scheduler.active:
            if time.monotonic() > deadline:
                raise AssertionError("requests still in flight")
            time.sleep(0.02)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="session")
def live(tmp_path_factory) -> LiveServer:
    settings = Settings(weights="tiny", devices="cpu", files_dir=tmp_path_factory.mktemp("files"),
                        api_keys=[], warmup=True)
    app = create_app(settings)
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws_max_size=settings.max_body_bytes, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:  # bounded wait on a condition: /ready turns 200 after load and warm-up
        try:
            if httpx.get(base + "/ready", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server did not become ready: {app.state.host.error}")
        time.sleep(0.1)
    yield LiveServer(app, base, settings)
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture(scope="session")
def model_id(live) -> str:
    return live.app.state.host.model_id


@pytest.fixture()
def http(live):
    with httpx.Client(base_url=live.base_url, timeout=60) as client:
        yield client
