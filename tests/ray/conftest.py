"""One local Ray instance (loopback, dashboard off, a few logical CPUs) serving the tiny preset
with `nextgpt serve --ray`'s own deploy(), shared by every test under tests/ray/.

Resources are logical: each replica asks for a quarter CPU so that the ingress, the encoder, the
LLM, the image and audio decoders and TWO video decoders fit on this small machine."""
from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import pytest

from server.background import free_socket
from server.settings import RayDeploymentSettings, RaySettings, Settings

READY_TIMEOUT_S = 300


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/ray/" in str(item.fspath):
            item.add_marker(pytest.mark.ray)


@dataclass
class RayServer:
    base_url: str
    settings: Settings

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/chat/ws"

    def replica_calls(self, stage: str) -> dict[str, float]:
        """Calls each replica of `stage` served, by replica actor name (from /metrics)."""
        from prometheus_client.parser import text_string_to_metric_families

        calls = {}
        for family in text_string_to_metric_families(httpx.get(self.base_url + "/metrics").text):
            for sample in family.samples:
                if sample.name == "nextgpt_stage_replica_calls_total" and sample.labels["stage"] == stage:
                    calls[sample.labels["replica"]] = sample.value
        return calls


def wait_ready(base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded wait on a condition: /ready turns 200 after warm-up
        try:
            if httpx.get(base_url + "/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the Ray ingress at {base_url} did not become ready in {timeout} s")


@pytest.fixture(scope="session")
def ray_server(tmp_path_factory):
    import ray
    from ray import serve

    from server.ray_serve.app import deploy

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # Serve's proxy binds it next
    small = dict(num_cpus=0.25, max_ongoing_requests=8)
    settings = Settings(
        weights="tiny", devices="cpu", host="127.0.0.1", port=port, files_dir=tmp_path_factory.mktemp("ray-files"),
        max_decoder_steps=1000,  # decoder calls long enough to kill a replica in the middle of one
        ray=RaySettings(num_cpus=4, ingress=RayDeploymentSettings(**small), encoder=RayDeploymentSettings(**small),
                        llm=RayDeploymentSettings(**small),
                        # one call at a time and one waiting: the backpressure test fills it
                        image=RayDeploymentSettings(num_cpus=0.25, max_ongoing_requests=1, max_queued_requests=1),
                        audio=RayDeploymentSettings(**small),
                        video=RayDeploymentSettings(num_replicas=2, **small)))
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", namespace="nextgpt",
             log_to_driver=False)
    try:
        deploy(settings)
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, READY_TIMEOUT_S)
        yield RayServer(base_url, settings)
    finally:
        serve.shutdown()
        ray.shutdown()
