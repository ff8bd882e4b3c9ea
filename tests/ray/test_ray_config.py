"""The Serve config operators deploy: valid for Ray's schema, and its args build the application
with each stage's resources and replica bounds (no cluster needed)."""
from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from server.ray_serve.app import app_builder, deployment_options
from server.settings import RayDeploymentSettings

CONFIG = Path(__file__).resolve().parents[2] / "docker" / "ray" / "serve-config.yaml"


def deployments(app) -> dict:
    """Every deployment bound into the application, by name."""
    found, todo = {}, [app._bound_deployment]
    while todo:
        bound = todo.pop()
        found[bound.name] = bound
        todo += [a._bound_deployment for a in (*bound.init_args, *bound.init_kwargs.values())
                 if hasattr(a, "_bound_deployment")]
    return found


def test_the_serve_config_is_valid_and_builds():
    config = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    assert app["import_path"] == "server.ray_serve.app:app_builder"
    built = deployments(app_builder({**app["args"], "weights": "tiny", "devices": "cpu"}))
    assert set(built) == {"ingress", "encoder", "llm", "image", "audio", "video"}
    assert built["llm"].ray_actor_options["num_gpus"] == 0.4
    video = built["video"]._deployment_config.autoscaling_config
    assert (video.min_replicas, video.max_replicas) == (1, 3)


def test_fixed_or_autoscaled_replicas():
    fixed = deployment_options(RayDeploymentSettings(num_replicas=3, num_gpus=0.5))
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"]["num_gpus"] == 0.5
    scaled = deployment_options(RayDeploymentSettings(min_replicas=2, max_replicas=5))
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 5
