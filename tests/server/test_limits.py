"""Scheduling limits and access: full queue (429), deadline (504), client disconnect, API keys
(401), not ready (503); after each the server answers a good request."""
from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

from .server_kit import SLOW_VIDEO, user
from .test_bad_input import URL, assert_error, assert_serving

SLOW = {"messages": [user(text="A long film.")], "max_tokens": 4, "seed": 1, "stream": True,
        "required_modalities": ["video"], "video": SLOW_VIDEO}


def read_until_progress(lines) -> list[dict]:
    """SSE events up to the first decoder progress chunk: the request is admitted and drawing."""
    events = []
    for line in lines:
        if line.startswith("data: {"):
            events.append(json.loads(line[6:]))
            if events[-1].get("progress"):
                return events
    raise AssertionError("the stream ended before any progress")


def test_full_queue_gets_429_with_retry_after(http, live):
    with live.settings(queue_size=1):
        cancelled = live.metric("nextgpt_requests_cancelled_total", reason="client")
        with http.stream("POST", URL, json=SLOW) as running:
            assert running.status_code == 200
            lines = running.iter_lines()  # held: a dropped iterator closes the stream
            read_until_progress(lines)
            refused = http.post(URL, json={"messages": [user(text="me too")], "max_tokens": 4})
            assert_error(refused, 429, None, "queue_full")
            assert refused.headers["retry-after"].isdigit() and int(refused.headers["retry-after"]) >= 1
            assert live.metric("nextgpt_queue_depth") == 1
        # leaving the `with` closes the connection: the server cancels the running request
        live.scheduler_idle()
        assert live.metric("nextgpt_requests_cancelled_total", reason="client") == cancelled + 1
        assert live.metric("nextgpt_requests_rejected_total", reason="queue_full") >= 1
        assert_serving(http)


def test_stages_overlap(http, live):
    """A text request is answered while another request's video decoder is still drawing."""
    with http.stream("POST", URL, json=SLOW) as running:
        lines = running.iter_lines()  # held: a dropped iterator closes the stream
        read_until_progress(lines)
        answered = http.post(URL, json={"messages": [user(text="quick one")], "max_tokens": 4,
                                        "modalities": ["text"]})
        assert answered.status_code == 200
        assert live.app.state.scheduler.active == 1  # the video request is still running
    live.scheduler_idle()


def test_deadline_gets_504(http, live):
    slow = {**SLOW, "stream": False}
    with live.settings(request_deadline_s=0.5):
        assert_error(http.post(URL, json=slow), 504, None, "deadline_exceeded")
        live.scheduler_idle()  # the decoder stopped at its next step
        assert live.metric("nextgpt_requests_cancelled_total", reason="deadline") >= 1
    assert_serving(http)


def test_deadline_mid_stream_is_an_error_event(http, live):
    with live.settings(request_deadline_s=0.5):
        with http.stream("POST", URL, json=SLOW) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "deadline_exceeded" and error["type"] == "timeout_error"
    live.scheduler_idle()
    assert_serving(http)


def test_non_streaming_client_disconnect_cancels(live):
    cancelled = live.metric("nextgpt_requests_cancelled_total", reason="client")
    with httpx.Client(base_url=live.base_url, timeout=2.0) as short:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
            short.post(URL, json={**SLOW, "stream": False})
    live.scheduler_idle()
    assert live.metric("nextgpt_requests_cancelled_total", reason="client") == cancelled + 1


def test_api_keys(http, live):
    with live.settings(api_keys=["k-one", "k-two"]):
        good = {"messages": [user(text="hi")], "max_tokens": 4, "modalities": ["text"]}
        assert_error(http.post(URL, json=good), 401, None, "missing_api_key")
        error = assert_error(http.post(URL, json=good, headers={"Authorization": "Bearer nope"}), 401, None,
                             "invalid_api_key")
        assert error["type"] == "authentication_error"
        assert_error(http.get("/v1/models"), 401)
        assert_error(http.get("/v1/files/file-" + "0" * 32), 401)
        assert_error(http.post(URL, json=good, headers={"Authorization": "Basic k-one"}), 401)
        for key in ("k-one", "k-two"):
            ok = http.post(URL, json=good, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200
    assert_serving(http)


def test_health_ready_metrics(http, live):
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready").json()
    assert ready["status"] == "ready" and ready["model"] == "nextgpt-tiny"
    text = http.get("/metrics").text
    for name in ("nextgpt_requests_total", "nextgpt_queue_depth", "nextgpt_stage_duration_seconds_bucket",
                 "nextgpt_generated_tokens_total", "nextgpt_media_generated_total",
                 "nextgpt_time_to_first_token_seconds", "nextgpt_generation_tokens_per_second",
                 "nextgpt_encoder_cache_hits_total"):
        assert name in text, name
    assert 'stage="language"' in text and 'stage="generate"' in text
    assert http.get("/").status_code == 200


def test_not_ready_is_503(tmp_path):
    """Before the model is loaded every model route says 503; a failed load says why."""
    app = create_app(Settings(weights=str(tmp_path / "no-such-model"), files_dir=tmp_path / "files"))
    client = TestClient(app)  # no lifespan: the model is never loaded
    assert client.get("/health").json() == {"status": "loading"}
    assert_error(client.get("/ready"), 503, None, "not_ready")
    assert_error(client.post(URL, json={"messages": [user()]}), 503, None, "not_ready")
    with TestClient(app) as running:  # with the lifespan: the load fails
        _wait_for(lambda: app.state.host.state == "failed")
        assert "no-such-model" in assert_error(running.get("/ready"), 503)["message"]
        assert_error(running.get("/health"), 503, None, "load_failed")


def _wait_for(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
