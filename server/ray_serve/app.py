"""The Ray Serve application: the ingress (the same FastAPI app as `nextgpt serve`) and the stage
deployments, with their resources from `Settings.ray`.

- `nextgpt serve --ray [--ray-address ADDR]` calls `serve_on_ray(settings)`.
- `serve deploy deploy/ray/serve-config.yaml` imports `server.ray_serve.app:app_builder`, whose
  `args` are settings (the same names as the NEXTGPT_* variables, lower case, without the prefix).
"""
from __future__ import annotations

import logging
import os
from typing import Any

from ray import serve
from ray.serve import Application

from ..settings import RayDeploymentSettings, Settings
from .backend import RayStages, RemoteModel, StageHandles
from .replicas import DecoderStage, EncoderStage, LanguageStage

log = logging.getLogger("nextgpt.server")
LOCAL_MIN_CPUS = 8  # a local instance's logical CPUs at least: the six deployments at 1 CPU each, and spare


@serve.deployment
@serve.ingress()
class NextGPTIngress:
    """HTTP and WebSocket: create_app's app, built in the replica once the stage handles are
    there (`__serve_build_asgi_app__`), with `RayStages` as its scheduler's backend."""

    def __init__(self, settings: dict, encoder: Any, llm: Any, **decoders: Any):
        self.settings = Settings(**settings)
        self.handles = StageHandles(encoder, llm, decoders)

    async def __serve_build_asgi_app__(self) -> Any:
        from ..app import create_app

        model = await RemoteModel.connect(self.settings, self.handles)
        stages = RayStages(self.handles, self.settings)
        app = create_app(self.settings, model=model, stages=stages)
        stages.metrics = app.state.metrics  # stage timings and replica calls on this app's /metrics
        return app


def deployment_options(stage: RayDeploymentSettings) -> dict[str, Any]:
    """Settings of one stage -> Serve's deployment options (fixed replicas, or autoscaling)."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": stage.num_cpus, "num_gpus": stage.num_gpus},
        "max_ongoing_requests": stage.max_ongoing_requests,
        "max_queued_requests": stage.max_queued_requests,
    }
    if stage.min_replicas is not None or stage.max_replicas is not None:
        low = stage.min_replicas if stage.min_replicas is not None else 1
        high = stage.max_replicas if stage.max_replicas is not None else max(low, stage.num_replicas)
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": max(low, high),
                                         "target_ongoing_requests": stage.target_ongoing_requests}
    else:
        options["num_replicas"] = stage.num_replicas
    return options


def build_application(settings: Settings) -> Application:
    """The ingress bound to an encoder, an LLM and one deployment per decoder the weights hold."""
    from models.loading import decoders_present

    from ..engine import resolve_weights

    decoders = decoders_present(resolve_weights(settings.weights))
    shared = settings.model_dump(mode="json")
    ray = settings.ray
    encoder = EncoderStage.options(name="encoder", **deployment_options(ray.encoder)).bind(shared)
    llm = LanguageStage.options(name="llm", **deployment_options(ray.llm)).bind(shared, decoders)
    bound = {m: DecoderStage.options(name=m, **deployment_options(getattr(ray, m))).bind(shared, m)
             for m in decoders}
    return NextGPTIngress.options(name="ingress", **deployment_options(ray.ingress)).bind(shared, encoder, llm,
                                                                                           **bound)


def app_builder(args: dict[str, Any]) -> Application:
    """`serve deploy` / `serve run` entry point: `args` are settings overrides; NEXTGPT_*
    variables in the replicas' environment fill the rest."""
    return build_application(Settings(**(args or {})))


def connect(settings: Settings) -> None:
    """Join the cluster at `settings.ray.address`, or start a local Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    if settings.ray.address:
        ray.init(address=settings.ray.address, namespace="nextgpt")
    else:  # Ray's CPUs are logical: a small machine still fits one replica of every stage
        cpus = settings.ray.num_cpus or max(os.cpu_count() or 1, LOCAL_MIN_CPUS)
        ray.init(num_cpus=cpus, include_dashboard=False, namespace="nextgpt")


def deploy(settings: Settings, blocking: bool = False) -> None:
    """Start Serve's HTTP proxy on settings.host:port and run the application (replaces the
    application of the same name, as `serve deploy` does)."""
    connect(settings)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_application(settings), name=settings.ray.app_name, route_prefix="/", blocking=blocking)


def serve_on_ray(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("deploying %s on Ray Serve (%s)", settings.weights, settings.ray.address or "a local Ray instance")
    deploy(settings, blocking=True)
    return 0
