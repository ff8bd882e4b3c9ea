"""`nextgpt bench --ray`: the same HTTP requests served by one process and by Ray Serve on this
machine (the ingress, the encoder, the LLM and each decoder as deployments), as ratios, with
where the time goes.

Where the time goes is read from each server's own /metrics (means per request):
- `language` and `image`: how long the scheduler waited for each stage call. In one process
  that is the model's work in a worker thread; on Ray it adds the hop to the replica and back
  (handle routing, pickling the turn and the conditions, streaming the text through the object
  store).
- `generate`: the LLM's own time inside whichever process ran it (timed by the model);
  `language - generate - projection - encode` is then the cost of getting to the stage and back.
- `encoder`: the hop to the encoder deployment (Ray only; this request has no media input).
- `http`: the rest of the request (parsing, rendering the PNG, the proxy hop on Ray).
"""
from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import httpx

from .http_scenarios import URL, first_token_seconds, image_request, post_ok
from .timing import Comparison

STAGES = ("encoder", "language", "encode", "generate", "projection", "image")
BENCH_REPLICA_CPUS = 0.25  # logical CPUs per replica: every stage fits on a small machine


def stage_means(base_url: str) -> dict[str, tuple[float, float]]:
    """stage -> (total seconds, calls) of nextgpt_stage_duration_seconds."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(httpx.get(base_url + "/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("nextgpt_stage_duration_seconds_") and sample.name[-4:] in ("_sum", "ount"):
                entry = sums.setdefault(sample.labels["stage"], [0.0, 0.0])
                entry[0 if sample.name.endswith("_sum") else 1] += sample.value
    return {k: (v[0], v[1]) for k, v in sums.items()}


def measure(base_url: str, repeat: int, concurrency: int) -> dict[str, float]:
    """Median latency of a text + image request, TTFT of a streamed text request, the wall time
    of `concurrency` such requests at once, and the per-stage means of the sequential runs."""
    with httpx.Client(base_url=base_url, timeout=300) as client:
        post_ok(client, image_request(0))  # warm the connection and every stage
        before = stage_means(base_url)
        latencies = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            post_ok(client, image_request(0))
            latencies.append(time.perf_counter() - t0)
        after = stage_means(base_url)
        ttft = statistics.median(first_token_seconds(client) for _ in range(repeat))

    def one(seed: int) -> None:
        with httpx.Client(base_url=base_url, timeout=300) as c:
            post_ok(c, image_request(seed))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))
    together = time.perf_counter() - t0
    result = {"request": statistics.median(latencies), "ttft": ttft, "concurrent": together}
    for stage in STAGES:
        total, calls = (after.get(stage, (0, 0))[i] - before.get(stage, (0, 0))[i] for i in (0, 1))
        result[stage] = total / repeat if calls else 0.0
    # means, like the stage figures (the row itself reports the median request)
    result["http"] = statistics.mean(latencies) - result["language"] - result["image"] - result["encoder"]
    # the way to the language stage and back, less the model's own work in it
    result["language_hop"] = result["language"] - result["encode"] - result["generate"] - result["projection"]
    return result


def single_process(settings, repeat: int, concurrency: int) -> dict[str, float]:
    from ..background import BackgroundServer

    with BackgroundServer(settings) as server:
        return measure(server.base_url, repeat, concurrency)


def on_ray(settings, repeat: int, concurrency: int, log: Callable[[str], None]) -> dict[str, float]:
    import ray
    from ray import serve

    from ..background import free_socket
    from ..ray_serve.app import deploy
    from ..settings import RayDeploymentSettings

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    stages = {name: RayDeploymentSettings(num_cpus=BENCH_REPLICA_CPUS, max_ongoing_requests=max(8, concurrency))
              for name in ("ingress", "encoder", "llm", "image", "audio", "video")}
    ray_settings = settings.ray.model_copy(update=stages)
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port, "ray": ray_settings})
    started = not ray.is_initialized() and not settings.ray.address
    t0 = time.perf_counter()
    try:
        deploy(settings)
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while httpx.get(base_url + "/ready", timeout=10).status_code != 200:  # warm-up through every stage
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray deployment did not become ready")
            time.sleep(0.2)
        log(f"  Ray Serve deployment ready in {time.perf_counter() - t0:.0f} s")
        return measure(base_url, repeat, concurrency)
    finally:
        serve.delete(settings.ray.app_name)
        if started:
            serve.shutdown()
            ray.shutdown()


def compare(settings, repeat: int, concurrency: int, log: Callable[[str], None]) -> list[Comparison]:
    """Single-process then Ray (not interleaved: the two servers would share the two cores)."""
    single = single_process(settings, repeat, concurrency)
    log("  single-process server measured")
    distributed = on_ray(settings, repeat, concurrency, log)
    breakdown = {f"{who}_{k}": v for who, r in (("single", single), ("ray", distributed))
                 for k, v in r.items() if k in (*STAGES, "http", "language_hop")}
    what = "the same requests to the single-process server"
    return [
        Comparison("Ray Serve / single process: text + image request", distributed["request"], single["request"],
                   what, higher_is_better=False, stages=breakdown),
        Comparison("Ray Serve / single process: time to first token", distributed["ttft"], single["ttft"], what,
                   higher_is_better=False),
        Comparison(f"Ray Serve / single process: {concurrency} concurrent clients", distributed["concurrent"],
                   single["concurrent"], what, higher_is_better=False),
    ]
