"""The real server (uvicorn, tiny preset, CPU) on a free loopback port, once per session.

`live.settings(**changes)` overrides the `get_settings` dependency for the duration of a `with`
block (queue size, deadline, API keys, limits), so one loaded model serves every test.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import httpx
import pytest

from server.background import BackgroundServer
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


@pytest.fixture(scope="session")
def live(tmp_path_factory) -> LiveServer:
    settings = Settings(weights="tiny", devices="cpu", files_dir=tmp_path_factory.mktemp("files"),
                        api_keys=[], warmup=True)
    with BackgroundServer(settings, ready_timeout_s=READY_TIMEOUT_S) as server:
        yield LiveServer(server.app, server.base_url, settings)


@pytest.fixture(scope="session")
def model_id(live) -> str:
    return live.app.state.host.model_id


@pytest.fixture()
def http(live):
    with httpx.Client(base_url=live.base_url, timeout=60) as client:
        yield client
