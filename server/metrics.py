"""Prometheus metrics, one registry per app (several apps may live in one process, e.g. tests).

requests by route and status, queue depth (admitted and per stage), per-stage latency
histograms, time to first token, generated tokens and tokens per second, media in and out,
cancellations, the encoder cache, and GPU memory where there is a GPU.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("nextgpt_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.request_latency = Histogram("nextgpt_request_duration_seconds", "HTTP request duration",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ws_turns = Counter("nextgpt_ws_turns", "WebSocket chat turns by outcome", ["outcome"], registry=r)
        self.queue_depth = Gauge("nextgpt_queue_depth", "requests admitted and not finished", registry=r)
        self.stage_depth = Gauge("nextgpt_stage_queue_depth", "calls waiting for or running in a stage",
                                 ["stage"], registry=r)
        self.stage_latency = Histogram("nextgpt_stage_duration_seconds", "time spent in each stage",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("nextgpt_time_to_first_token_seconds", "admission to first text delta",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("nextgpt_prompt_tokens", "prompt positions, media included", registry=r)
        self.generated_tokens = Counter("nextgpt_generated_tokens", "tokens generated", registry=r)
        self.tokens_per_second = Histogram("nextgpt_generation_tokens_per_second",
                                           "generation speed per request", buckets=RATE_BUCKETS, registry=r)
        self.media_in = Counter("nextgpt_media_inputs", "media items received", ["modality"], registry=r)
        self.media_out = Counter("nextgpt_media_generated", "media items produced", ["modality"], registry=r)
        self.media_skipped = Counter("nextgpt_media_skipped", "accepted outputs not produced",
                                     ["modality"], registry=r)
        self.cancelled = Counter("nextgpt_requests_cancelled", "requests stopped before the end",
                                 ["reason"], registry=r)
        self.rejected = Counter("nextgpt_requests_rejected", "requests refused by the scheduler",
                                ["reason"], registry=r)
        self.replica_calls = Counter("nextgpt_stage_replica_calls", "stage calls per Ray Serve replica "
                                     "(nextgpt serve --ray)", ["stage", "replica"], registry=r)

    def watch_model(self, get_model: Callable[[], Any]) -> None:
        self.registry.register(_ModelCollector(get_model))


class _ModelCollector:
    """Read at scrape time: the encoder's cache counters and GPU memory."""

    def __init__(self, get_model: Callable[[], Any]):
        self.get_model = get_model

    def describe(self):
        return []

    def collect(self):
        model = self.get_model()
        encoder = getattr(model, "encoder", None)
        hits = CounterMetricFamily("nextgpt_encoder_cache_hits", "media encodings served from the cache")
        encoded = CounterMetricFamily("nextgpt_encoder_items_encoded", "media items run through the encoder")
        hits.add_metric([], float(getattr(encoder, "cache_hits", 0)))
        encoded.add_metric([], float(getattr(encoder, "encoded", 0)))
        yield hits
        yield encoded
        try:
            import torch

            if torch.cuda.is_available():
                gpu = GaugeMetricFamily("nextgpt_gpu_memory_bytes", "GPU memory", labels=["device", "kind"])
                for i in range(torch.cuda.device_count()):
                    gpu.add_metric([str(i), "allocated"], float(torch.cuda.memory_allocated(i)))
                    gpu.add_metric([str(i), "reserved"], float(torch.cuda.memory_reserved(i)))
                yield gpu
        except Exception:  # metrics must never fail a scrape
            return


class MetricsMiddleware:
    """Pure ASGI: counts every HTTP response by route template and status, and times it."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}
        start = time.perf_counter()

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(scope["method"], route, str(status["code"])).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - start)
