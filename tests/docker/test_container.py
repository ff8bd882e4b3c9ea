"""The CPU image, really built and run with podman (no Docker engine here), as ../shared/OFFLINE.md
describes: a local base made with debootstrap, `podman build --isolation=chroot`, then the server
answering /ready and a chat request from outside the container, and stopping cleanly on SIGTERM.

Needs root, podman, runc and (to make the base the first time) debootstrap; skips with the reason
otherwise. Takes minutes (the first build most: see the phase times it prints). Settings:
  NEXTGPT_TEST_BASE_IMAGE   base to build on (default localhost/python:3.11-slim, made here if missing)
  NEXTGPT_TEST_IMAGE        tag of the image it builds (kept afterwards, so a rebuild reuses its layers)
  NEXTGPT_TEST_TORCH_INDEX_URL  torch's index for the build (default: see torch_source())
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import re
import tempfile
import threading
import time
from datetime import datetime
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.container, pytest.mark.timeout(5400)]

ROOT = Path(__file__).resolve().parents[2]
BASE = os.environ.get("NEXTGPT_TEST_BASE_IMAGE", "localhost/python:3.11-slim")
IMAGE = os.environ.get("NEXTGPT_TEST_IMAGE", "localhost/nextgpt-server:cpu-test")
APP_UID = "10001"  # docker/Dockerfile*: ARG APP_UID
READY_TIMEOUT_S = 300
TIMES: dict[str, float] = {}


def report(capsys, phase: str, seconds: float, note: str = "") -> None:
    TIMES[phase] = seconds
    with capsys.disabled():
        print(f"\n[container] {phase}: {seconds:.1f} s{'  ' + note if note else ''}", flush=True)


# --- podman ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def podman_env():
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman or runc is missing (apt-get install -y podman runc debootstrap)")
    if os.geteuid() != 0:
        pytest.skip("the podman recipe of shared/OFFLINE.md runs as root")
    conf = Path(tempfile.mkdtemp(prefix="nextgpt-podman-")) / "containers.conf"
    # The sandbox refuses podman's default rlimits (shared/OFFLINE.md).
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    yield env
    shutil.rmtree(conf.parent, ignore_errors=True)


def podman(env, *args, check=True, timeout=600, nice=False, **kw) -> subprocess.CompletedProcess:
    cmd = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args]
    if nice:  # the build is long and CPU-heavy: leave the shared cores to others first
        cmd = ["nice", "-n", "10", *cmd]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and run.returncode != 0:
        pytest.fail(f"{shlex.join(cmd)} -> {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    return run


@pytest.fixture(scope="module")
def base_image(podman_env, capsys_module):
    """A local stand-in for python:3.11-slim (Debian 12's python3 is 3.11), made once and kept."""
    if podman(podman_env, "image", "exists", BASE, check=False).returncode == 0:
        report(capsys_module, "base image", 0.0, f"{BASE} already there (podman image exists)")
        return BASE
    if shutil.which("debootstrap") is None:
        pytest.skip(f"{BASE} is missing and debootstrap, which makes it, is not installed")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nextgpt-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run = subprocess.run(["nice", "-n", "10", "debootstrap", "--variant=minbase",
                              "--include=python3,python3-venv,ca-certificates", "bookworm", str(rootfs)],
                             capture_output=True, text=True, timeout=1200)
        if run.returncode != 0:
            pytest.fail(f"debootstrap failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = podman(podman_env, "import", "--change", "ENV LANG=C.UTF-8", "-", BASE, stdin=tar.stdout)
        tar.stdout.close()
        assert tar.wait() == 0 and imp.returncode == 0
    report(capsys_module, "base image", time.monotonic() - start, f"debootstrap + podman import -> {BASE}")
    return BASE


@pytest.fixture(scope="module")
def capsys_module(request):
    """capsys for module fixtures: print the phase times even under `pytest -q`."""
    capman = request.config.pluginmanager.getplugin("capturemanager")

    class Disabled:
        def disabled(self):
            return capman.global_and_fixture_disabled()

    return Disabled()


# --- what the build reads: this machine's pip configuration -------------------------------------

def pip_config() -> dict[str, str]:
    """`pip config list` of the interpreter running the tests, env entries (PIP_*) last so they win."""
    run = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    values: dict[str, str] = {}
    lines = sorted(run.stdout.splitlines(), key=lambda line: line.startswith(":env:"))
    for line in lines:
        key, _, value = line.partition("=")
        values[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    return values


def local_wheel_sources(config: dict[str, str]) -> tuple[list[Path], str, str]:
    """The local folders pip reads (find-links, file:// indexes), to mount into the build at the
    same paths, and the PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL values that name them there."""
    mounts: list[Path] = []
    find_links: list[str] = []
    indexes: list[str] = []
    for item in config.get("find-links", "").split():
        path = Path(urlparse(item).path if item.startswith("file:") else item)
        if path.is_dir():
            mounts.append(path)
            find_links.append(str(path))
    for item in config.get("extra-index-url", "").split():
        if item.startswith("file:"):
            simple = Path(urlparse(item).path)
            if simple.is_dir():
                mounts.append(simple.parent)  # the index's links point at ../../files/...
                indexes.append(item)
    return sorted(set(mounts)), " ".join(find_links), " ".join(indexes)


def has_local_torch(mounts: list[Path], version: str) -> bool:
    return any(next(m.rglob(f"torch-{version}-*.whl"), None) for m in mounts)


def torch_source(mounts: list[Path]) -> tuple[str | None, str]:
    """Which index the CPU image's torch comes from in this build, and why.

    The Dockerfile's default is PyTorch's CPU index (`torch==2.14.1+cpu`). That host is not
    reachable on this project's machines, and the only torch 2.14.1 on their disk is PyPI's CUDA
    build: there the test builds with the CUDA image's index (PyPI), and pip takes that wheel and
    its nvidia-* wheels from the mounted folders instead of downloading them. The image is then
    about 6 GB instead of about 1 GB, and runs the same on the CPU."""
    if os.environ.get("NEXTGPT_TEST_TORCH_INDEX_URL"):
        return os.environ["NEXTGPT_TEST_TORCH_INDEX_URL"], "NEXTGPT_TEST_TORCH_INDEX_URL"
    if has_local_torch(mounts, "2.14.1"):
        return "https://pypi.org/simple", "local torch 2.14.1 wheel (the CUDA build: the only 2.14.1 on disk)"
    return None, "the Dockerfile's default (PyTorch's CPU index)"


@pytest.fixture(scope="module")
def image(podman_env, base_image, capsys_module):
    config = pip_config()
    mounts, find_links, indexes = local_wheel_sources(config)
    torch_index, why = torch_source(mounts)
    cmd = ["build", "--isolation=chroot", "--network", "host", "--format", "docker",
           "-f", "docker/Dockerfile.cpu", "-t", IMAGE, "--build-arg", f"BASE_IMAGE={base_image}"]
    if torch_index:
        cmd += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]
    for path in mounts:
        cmd += ["-v", f"{path}:{path}:ro"]
    if find_links:
        cmd += ["--build-arg", f"PIP_FIND_LINKS={find_links}"]
    if indexes:
        cmd += ["--build-arg", f"PIP_EXTRA_INDEX_URL={indexes}"]
    cert = config.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE")
    if cert and Path(cert).is_file():
        # this machine reaches the package index through its own CA; never mounted over the
        # image's ca-certificates.crt (that breaks apt): beside it, and named by PIP_CERT
        cmd += ["-v", f"{cert}:/host-ca.crt:ro", "--build-arg", "PIP_CERT=/host-ca.crt"]
    cmd.append(str(ROOT))
    # A build that failed part-way (disk full, killed) leaves its builder stage untagged: several GB.
    prune_builder_stages(podman_env)
    require_free_disk(podman_env)
    before = image_id(podman_env, IMAGE)
    start = time.monotonic()
    # The dependency stage first, under its own tag, so its layers (minutes to install) stay
    # cached for the next run whatever gets pruned below; then the image, reusing them.
    deps = cmd[:]
    deps[deps.index("-t") + 1] = f"{IMAGE}-deps"
    deps[-1:-1] = ["--target", "deps"]
    podman(podman_env, *deps, timeout=3600, nice=True)
    podman(podman_env, *cmd, timeout=3600, nice=True)
    size = podman(podman_env, "image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip()
    report(capsys_module, "build", time.monotonic() - start,
           f"{IMAGE}, {int(size) / 1e9:.1f} GB; torch from: {why}")
    # Drop the image this build replaced and the untagged images of earlier builds' deps and
    # builder stages (the Dockerfiles label them), nothing else: several GB each.
    if before and before != image_id(podman_env, IMAGE):
        podman(podman_env, "rmi", before, check=False)
    prune_builder_stages(podman_env)
    return IMAGE


def prune_builder_stages(env) -> None:
    podman(env, "image", "prune", "-f", "--filter", "label=org.nextgpt.stage=builder", check=False)


# The runtime stage copies the deps stage's venv (about 6.5 GB with PyPI's CUDA torch) into a new
# layer while the image it replaces still exists: a rebuild took 7 GB at its peak (session 26).
BUILD_NEEDS_GB = 10


def require_free_disk(env) -> None:
    """Fail before a long build that cannot fit, naming the folder and the space, rather than
    with podman's exit 125 half-way through."""
    root = podman(env, "info", "--format", "{{.Store.GraphRoot}}").stdout.strip() or "/var/lib/containers"
    free_gb = shutil.disk_usage(root).free / 1e9
    if free_gb < BUILD_NEEDS_GB:
        pytest.fail(f"{free_gb:.1f} GB free under {root}; building the CPU image needs about "
                    f"{BUILD_NEEDS_GB} GB (free space: leftover clones, `podman image prune`)")


def image_id(env, name: str) -> str | None:
    run = podman(env, "image", "inspect", name, "--format", "{{.Id}}", check=False)
    return run.stdout.strip() if run.returncode == 0 else None


# --- the running server ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seconds_between(logs: str, first: str, last: str) -> float:
    """Seconds between the lines holding `first` and `last` in `podman logs -t` output."""
    def stamp(needle: str) -> datetime:
        line = next(line for line in logs.splitlines() if needle in line)
        match = re.match(r"(\S+?T\d\d:\d\d:\d\d)(\.\d{1,6})?\d*(Z|[+-]\d\d:\d\d)", line)
        assert match, line
        return datetime.fromisoformat(match[1] + (match[2] or "") + match[3].replace("Z", "+00:00"))
    return (stamp(last) - stamp(first)).total_seconds()


def inspect(env, name: str) -> dict:
    return json.loads(podman(env, "inspect", name).stdout)[0]


def test_image_contents(podman_env, image):
    """Non-root, no weights baked in, nothing needed only for building."""
    data = json.loads(podman(podman_env, "image", "inspect", image).stdout)[0]
    config = data["Config"]
    assert config["User"] == f"{APP_UID}:{APP_UID}"
    health = data.get("Healthcheck") or config.get("Healthcheck")  # podman: top level; docker: Config
    assert health and "/ready" in " ".join(health["Test"]), "HEALTHCHECK lost: build with --format docker"
    assert config.get("StopSignal") in ("SIGTERM", "15", None)
    probe = (
        "import importlib.util as u, json, os, torch, weights; d = os.path.dirname(weights.__file__); "
        "print(json.dumps({'uid': os.getuid(), 'torch': torch.__version__, 'pip': u.find_spec('pip') is not None, "
        "'weights': sorted(x for x in os.listdir(d) if os.path.isdir(os.path.join(d, x)) and x != '__pycache__'), "
        "'writable': os.access(d, os.W_OK), 'data': os.stat('/data').st_uid}))"
    )
    out = podman(podman_env, "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", probe)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["uid"] == int(APP_UID) and facts["data"] == int(APP_UID)
    assert facts["torch"].split("+")[0] == "2.14.1"
    assert not facts["pip"], "pip is a build tool: not in the runtime image"
    assert not {"tiny", "nextgpt-7b-tiva-v0", "cache"} & set(facts["weights"]), f"weights baked in: {facts}"
    assert facts["writable"], "the tiny preset is built at first start into the weights package folder"
    for tool in ("curl", "wget", "gcc"):
        found = podman(podman_env, "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                       f"command -v {tool}", check=False)
        assert found.returncode != 0, f"{tool} is in the runtime image"


def test_serves_and_stops_cleanly_on_sigterm(podman_env, image, capsys):
    import httpx

    port = free_port()
    name = f"nextgpt-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-data"
    base = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        # Host network (shared/OFFLINE.md): the server binds 0.0.0.0:port on this machine's
        # loopback; the client below is this test process, outside the container.
        podman(podman_env, "run", "-d", "--name", name, "--network", "host", "-e", f"NEXTGPT_PORT={port}",
               "-v", f"{volume}:/data", image)
        ready = None
        while time.monotonic() - start < READY_TIMEOUT_S:
            state = inspect(podman_env, name)["State"]
            if not state["Running"]:
                logs = podman(podman_env, "logs", name, check=False)
                pytest.fail(f"the container exited ({state['ExitCode']}) before /ready:\n"
                            f"{logs.stdout[-4000:]}{logs.stderr[-4000:]}")
            try:
                ready = httpx.get(f"{base}/ready", timeout=5)
                if ready.status_code == 200:
                    break
                assert ready.status_code == 503, ready.text  # loading: 503 until warm
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(1)
        else:
            logs = podman(podman_env, "logs", name, check=False)
            pytest.fail(f"/ready not 200 after {READY_TIMEOUT_S} s:\n{logs.stdout[-4000:]}{logs.stderr[-4000:]}")
        report(capsys, "start to /ready", time.monotonic() - start, "nano preset loaded, then warm-up")

        # The image's own HEALTHCHECK command, run inside the container (podman has no timer here).
        health = podman(podman_env, "healthcheck", "run", name, check=False)
        assert health.returncode == 0, f"healthcheck: {health.stdout}{health.stderr}"
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200

        start = time.monotonic()
        with httpx.Client(base_url=base, timeout=120) as client:
            models = client.get("/v1/models").json()
            model = models["data"][0]["id"]
            reply = client.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 8, "modalities": ["text"],
                "messages": [{"role": "user", "content": "Hello from outside the container."}],
            })
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["object"] == "chat.completion" and body["model"] == model
            assert isinstance(body["choices"][0]["message"]["content"], str)
            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and "# TYPE" in metrics.text
        report(capsys, "chat request", time.monotonic() - start, f"model {model!r}")

        # SIGTERM (`podman stop`, as `docker stop`) while a streamed request is in flight: the
        # server stops accepting, lets the request finish (or cancels it after its drain time),
        # shuts down and exits 0, well before podman would resort to SIGKILL.
        stopper: dict = {}

        def stop_container():
            stopper["at"] = time.monotonic()
            stopper["run"] = podman(podman_env, "stop", "-t", "30", name, timeout=120, check=False)
            stopper["took"] = time.monotonic() - stopper["at"]

        thread = threading.Thread(target=stop_container)
        chunks, finished, cut = 0, False, False
        with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=120, json={
            "model": model, "max_tokens": 1024, "modalities": ["text"], "stream": True,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
        }) as stream:
            assert stream.status_code == 200
            try:
                for line in stream.iter_lines():
                    if line.strip() == "data: [DONE]":
                        finished = True
                        break
                    if line.startswith("data:"):
                        chunks += 1
                        if chunks == 1:
                            thread.start()  # SIGTERM once the first chunk is out
            except httpx.HTTPError:
                cut = True  # cancelled at the end of the drain time: allowed, if it then exits cleanly
        if chunks == 0:
            thread.start()
        thread.join(150)
        state = inspect(podman_env, name)["State"]
        logs = podman(podman_env, "logs", "-t", name, check=False)
        text = logs.stdout + logs.stderr
        drain = seconds_between(text, "Shutting down", "Finished server process")
        waited = "Waiting for connections to close" in text  # uvicorn: a request was in flight
        report(capsys, "SIGTERM to exit", stopper["took"],
               f"exit code {state['ExitCode']}; uvicorn drain {drain:.1f} s; streamed request "
               f"{'in flight at SIGTERM' if waited else 'done before SIGTERM'}: {chunks} chunks, "
               f"{'finished' if finished else 'cut' if cut else 'ended'}")
        assert stopper["run"].returncode == 0, stopper["run"].stderr
        assert state["ExitCode"] == 0, f"not a clean exit ({state['ExitCode']}):\n{text[-4000:]}"
        assert stopper["took"] < 30, "podman had to SIGKILL it"
        assert "Shutting down" in text and "Finished server process" in text, text[-4000:]
        assert finished or cut, "the streamed request neither finished nor was cut: it hung"
    finally:
        podman(podman_env, "rm", "-f", name, check=False)
        podman(podman_env, "volume", "rm", "-f", volume, check=False)
        if TIMES:
            with capsys.disabled():
                print("[container] phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMES.items()), flush=True)
