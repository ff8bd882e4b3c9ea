"""The API on Ray Serve: the OpenAI-client tests of tests/server/ run unchanged against the Ray
ingress (their `client` and `model_id` fixtures are replaced here), plus a WebSocket
conversation with a cancel that reaches the decoder replica."""
from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI

from tests.server.server_kit import SLOW_VIDEO, image_part, user
from tests.server.test_openai_sdk import (test_media_in_and_all_media_out,  # noqa: F401 (run here too)
                                          test_models_list, test_plain_string_messages_and_history,
                                          test_streaming_text_then_media)
from tests.server.test_ws import send, session, turn, until


@pytest.fixture()
def client(ray_server) -> OpenAI:
    return OpenAI(base_url=ray_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture()
def model_id(ray_server) -> str:
    return httpx.get(ray_server.base_url + "/ready").json()["model"]


@pytest.fixture()
def ws(ray_server):
    with session(ray_server.ws_url) as socket:
        yield socket


def test_websocket_turns_then_cancel_reaches_the_decoder(ws, ray_server):
    done, seen = turn(ws, image_part(), text="What is this? Draw one.", rid="r1", required_modalities=["image"])
    kinds = [m["type"] for m in seen]
    assert "text.delta" in kinds and "media.progress" in kinds and kinds.index("media.done") > kinds.index("media.progress")
    assert done["usage"]["prompt_tokens_details"]["media_items"] == 1
    done, _ = turn(ws, text="And its colour?", rid="r2", modalities=["text"])
    assert done["usage"]["prompt_tokens_details"]["media_items"] == 2  # the history's image and the drawn one

    # a video of 100 steps, cancelled at its first step: the replica stops, the turn ends at once
    send(ws, {"type": "chat.request", "request_id": "r3", "messages": [user(text="Animate it")], "max_tokens": 4,
              "required_modalities": ["video"], "video": SLOW_VIDEO})
    until(ws, "media.progress")
    start = time.monotonic()
    send(ws, {"type": "cancel"})
    done, _ = until(ws, "done")
    assert done["finish_reason"] == "cancelled" and time.monotonic() - start < 30

    # the socket and the video deployment serve the next turn
    done, seen = turn(ws, text="Again, short.", rid="r4", required_modalities=["video"])
    assert any(m["type"] == "media.done" and m["modality"] == "video" for m in seen)


def test_bad_input_keeps_the_error_shape(ray_server):
    response = httpx.post(ray_server.base_url + "/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "hi"}], "image": {"num_inference_steps": 10**6},
                                "required_modalities": ["image"]}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image.num_inference_steps"
    response = httpx.post(ray_server.base_url + "/v1/chat/completions",
                          json={"messages": [{"role": "assistant", "content": "hi"}]}, timeout=60)
    assert response.status_code == 400 and "last message" in response.json()["error"]["message"]
