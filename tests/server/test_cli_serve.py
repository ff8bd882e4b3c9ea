"""`nextgpt serve` as a process: arguments and NEXTGPT_* variables, ready, a chat, a clean stop."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_subprocess(tmp_path):
    port = free_port()
    env = {**os.environ, "NEXTGPT_WEIGHTS": "tiny", "NEXTGPT_WARMUP": "false", "NEXTGPT_API_KEYS": "from-env",
           "NEXTGPT_FILES_DIR": str(tmp_path / "files"), "NEXTGPT_DEVICES": "cpu", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--log-level", "warning"]
    log = open(tmp_path / "serve.log", "w+")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # bounded wait on a condition
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(base + "/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.2)
        assert httpx.get(base + "/v1/models").status_code == 401
        models = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer from-env"}).json()
        assert models["data"][0]["id"] == "nextgpt-tiny"
        answer = httpx.post(base + "/v1/chat/completions", headers={"Authorization": "Bearer from-env"},
                            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                  "modalities": ["text"]}, timeout=60)
        assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            log.close()
    assert code in (0, -signal.SIGTERM)  # uvicorn shuts down gracefully, then re-raises the signal
