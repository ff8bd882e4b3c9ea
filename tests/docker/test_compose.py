"""docker/compose.yaml against the Compose Specification's JSON schema (vendored: SCHEMA_SOURCE.md),
before and after variable interpolation, and the deployment the issue asks for."""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

HERE = Path(__file__).resolve().parent
COMPOSE = HERE.parents[1] / "docker" / "compose.yaml"
SCHEMA = HERE / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


@pytest.fixture(scope="module")
def validator():
    raw = SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "compose-spec.json changed: see SCHEMA_SOURCE.md"
    schema = json.loads(raw)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(node, env: dict[str, str]):
    """Compose's `${VAR}` / `${VAR:-default}` substitution with `env`, as `docker compose config` does."""
    if isinstance(node, str):
        return VAR.sub(lambda m: env.get(m["name"]) or (m["default"] or ""), node)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def errors(validator, document) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_matches_the_schema(validator, compose):
    assert errors(validator, compose) == []


@pytest.mark.parametrize("env", [{}, {"NEXTGPT_PUBLISH": "0.0.0.0:9000", "NEXTGPT_WEIGHTS": "/data/mine"}],
                         ids=["defaults", "overridden"])
def test_compose_file_matches_the_schema_once_interpolated(validator, compose, env):
    assert errors(validator, interpolate(compose, env)) == []


def test_schema_check_is_live(validator, compose):
    """A typo'd key or a wrong type is caught, so the passes above mean something."""
    bad = copy.deepcopy(compose)
    bad["services"]["server"]["restart_policy"] = "always"
    assert errors(validator, bad)
    bad = copy.deepcopy(compose)
    bad["services"]["server"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities")
    assert errors(validator, bad)


def test_gpu_service(compose):
    server = compose["services"]["server"]
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert server["build"]["dockerfile"] == "docker/Dockerfile"
    assert "weights:/data" in server["volumes"]
    assert server["ports"] and server["restart"] in ("always", "unless-stopped", "on-failure")
    assert "/ready" in " ".join(server["healthcheck"]["test"])
    assert server["depends_on"]["fetch-weights"]["condition"] == "service_completed_successfully"
    assert server["environment"]["NEXTGPT_WEIGHTS"].endswith(":-/data/nextgpt-7b-tiva-v0}")
    # loopback unless the operator publishes it (no API keys by default)
    assert interpolate(server["ports"], {})[0].startswith("127.0.0.1:")


def test_fetch_is_one_shot_into_the_same_volume(compose):
    fetch = compose["services"]["fetch-weights"]
    assert fetch["restart"] == "no"
    assert fetch["command"][:3] == ["weights", "fetch", "nextgpt-7b-tiva-v0"]
    directory = fetch["command"][fetch["command"].index("--dir") + 1]
    assert directory == "/data/nextgpt-7b-tiva-v0" and "weights:/data" in fetch["volumes"]
    assert fetch["image"] == compose["services"]["server"]["image"]


def test_cpu_profile(compose):
    cpu = compose["services"]["server-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert "deploy" not in cpu and cpu["environment"]["NEXTGPT_DEVICES"] == "cpu"
    assert "/ready" in " ".join(cpu["healthcheck"]["test"])
    # the default (profile-less) services are exactly the GPU deployment
    assert sorted(n for n, s in compose["services"].items() if not s.get("profiles")) == ["fetch-weights", "server"]
    assert "weights" in compose["volumes"]
