"""Replicas on Ray Serve: a decoder replica killed mid-request (the error, then a served request
on the replica Ray starts in its place), requests spread over two video replicas, and a full
decoder queue as 429 with Retry-After."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ray

from tests.server.server_kit import SMALL, user

URL = "/v1/chat/completions"
LONG_IMAGE = {"num_inference_steps": 400, "height": 32, "width": 32}  # seconds of work: time to kill it


def events(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: "):])


def image_body(params: dict, **extra) -> dict:
    return {"messages": [user(text="Draw a square")], "max_tokens": 4, "seed": 1, "modalities": ["text", "image"],
            "required_modalities": ["image"], "image": params, **extra}


def alive_replica(ray_server, stage: str) -> str:
    for name in ray_server.replica_calls(stage):
        try:
            ray.get_actor(name, namespace="serve")
            return name
        except ValueError:  # a replica killed earlier
            continue
    raise AssertionError(f"no live {stage} replica in the metrics")


def post_until_served(base_url: str, body: dict, timeout: float = 180) -> httpx.Response:
    """The next request, retried (bounded) while Ray starts the replacement replica."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.post(base_url + URL, json=body, timeout=120)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        assert response.status_code == 503 and response.json()["error"]["code"] == "stage_unavailable", response.text


def test_killed_decoder_replica_gives_an_error_then_recovers(ray_server):
    with httpx.stream("POST", ray_server.base_url + URL, json=image_body(LONG_IMAGE, stream=True), timeout=120) as r:
        assert r.status_code == 200
        stream = events(r)
        next(e for e in stream if e.get("progress"))  # the decoder replica is drawing
        victim = alive_replica(ray_server, "image")
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        rest = list(stream)
    errors = [e["error"] for e in rest if "error" in e]
    assert errors and errors[0]["code"] == "stage_unavailable" and "image" in errors[0]["message"], rest[-3:]

    response = post_until_served(ray_server.base_url, image_body(SMALL["image"]))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["images"]
    assert alive_replica(ray_server, "image") != victim  # Serve started another


def test_requests_spread_over_two_video_replicas(ray_server):
    from ray import serve

    status = serve.status().applications["nextgpt"].deployments["video"]
    assert status.replica_states.get("RUNNING") == 2
    before = ray_server.replica_calls("video")
    body = {"messages": [user(text="Animate")], "max_tokens": 4, "required_modalities": ["video"], **SMALL}

    def one(seed: int) -> int:
        return httpx.post(ray_server.base_url + URL, json={**body, "seed": seed}, timeout=120).status_code

    used: set[str] = set()
    for burst in range(3):  # bounded: four at once go to the less busy replica of two chosen
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(one, range(burst * 4, burst * 4 + 4))) == [200] * 4
        after = ray_server.replica_calls("video")
        used = {name for name, calls in after.items() if calls > before.get(name, 0)}
        if len(used) == 2:
            break
    assert len(used) == 2, used


def test_full_decoder_queue_is_429_with_retry_after(ray_server):
    """The image deployment takes one call and queues one (its max_queued_requests); a burst
    of six gets 429s in the API's error shape, and the others are served."""
    slow = {"num_inference_steps": 60, "height": 32, "width": 32}

    def one(seed: int) -> httpx.Response:
        return httpx.post(ray_server.base_url + URL, json=image_body(slow, seed=seed), timeout=180)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, range(6)))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 429 in codes, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
