"""Bench scenarios over real HTTP: overhead against a direct call, concurrent clients against one
by one, and time to first token while another request's video decoder draws."""
from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from models.generate import SamplingParams
from models.types import Message

from ..background import BackgroundServer
from .timing import Comparison

URL = "/v1/chat/completions"
PROMPT = "Draw a red circle."


def image_request(seed: int, max_tokens: int = 16) -> dict:
    return {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0,
            "seed": seed, "modalities": ["text", "image"], "required_modalities": ["image"]}


def post_ok(client: httpx.Client, body: dict) -> dict:
    response = client.post(URL, json=body)
    response.raise_for_status()
    return response.json()


def http_overhead(server: BackgroundServer, repeat: int) -> Comparison:
    """The same text + image request over HTTP (JSON, PNG inline) and as a library call,
    interleaved so that both see the same machine (medians of `repeat` pairs)."""
    model = server.app.state.host.model
    messages = [Message("user", PROMPT)]
    over_http, direct = [], []
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        post_ok(client, image_request(0))  # warm the connection
        for _ in range(repeat):
            t0 = time.perf_counter()
            post_ok(client, image_request(0))
            over_http.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.chat(messages, modalities=["text", "image"], required=["image"],
                       sampling=SamplingParams(16, 0.0, 0.01, 0))
            direct.append(time.perf_counter() - t0)
    return Comparison("HTTP end-to-end / direct library call", statistics.median(over_http),
                      statistics.median(direct), "the same request as model.chat() in-process",
                      higher_is_better=False, target=1.10)


def concurrent_clients(server: BackgroundServer, clients: int, repeat: int = 3) -> Comparison:
    """`clients` text + image requests at once against the same requests one by one (medians of
    `repeat` rounds of each, alternated: one round is a single sample of a noisy machine)."""
    def one(seed: int) -> None:
        with httpx.Client(base_url=server.base_url, timeout=300) as client:
            post_ok(client, image_request(seed))

    def one_by_one() -> float:
        t0 = time.perf_counter()
        for seed in range(clients):
            one(seed)
        return time.perf_counter() - t0

    def together() -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(clients)))
        return time.perf_counter() - t0

    rounds = [(one_by_one(), together()) for _ in range(max(1, repeat))]
    alone, together_s = (statistics.median(r[k] for r in rounds) for k in (0, 1))
    model = server.app.state.host.model
    batcher, generator = model.batchers.get("image"), model.llm_batcher
    stages = {"largest_image_batch": float(batcher.largest_batch if batcher else 1),
              "largest_llm_batch": float(generator.largest_batch if generator else 1)}
    return Comparison(f"{clients} concurrent clients (text + image), throughput", together_s, alone,
                      "the same requests served one by one", target=2.0, stages=stages)


def first_token_seconds(client: httpx.Client) -> float:
    body = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8, "stream": True,
            "modalities": ["text"]}
    t0 = time.perf_counter()
    with client.stream("POST", URL, json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return time.perf_counter() - t0
    raise RuntimeError("the stream ended without text")


def ttft_under_video(server: BackgroundServer, repeat: int) -> Comparison:
    """Time to first token of a text request, idle and while a long video is being drawn."""
    video = {"messages": [{"role": "user", "content": "A long film."}], "max_tokens": 4, "stream": True,
             "required_modalities": ["video"], "video": {"num_inference_steps": 100, "num_frames": 16}}
    drawing, stop = threading.Event(), threading.Event()

    def draw() -> None:
        with httpx.Client(base_url=server.base_url, timeout=600) as c, c.stream("POST", URL, json=video) as r:
            for line in r.iter_lines():
                if '"progress"' in line:
                    drawing.set()
                if stop.is_set():
                    return  # closing the stream cancels the video request

    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        first_token_seconds(client)  # warm
        idle = statistics.median(first_token_seconds(client) for _ in range(repeat))
        worker = threading.Thread(target=draw, daemon=True)
        worker.start()
        if not drawing.wait(120):
            raise RuntimeError("the video request never started drawing")
        busy = statistics.median(first_token_seconds(client) for _ in range(repeat))
        stop.set()
        worker.join(60)
    return Comparison("time to first token while a video draws / idle", busy, idle,
                      "the same text request on an idle server", higher_is_better=False, target=1.5)
