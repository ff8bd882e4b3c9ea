"""The server's parts on their own: settings, error params, base64, codecs, files, remote fetches, CLI."""
from __future__ import annotations

import asyncio
import io
import time

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from server import codecs, remote
from server.cli import build_parser, settings_from_args
from server.errors import APIError, loc_to_param
from server.files import FileStore
from server.inputs import b64decode
from server.settings import Settings
from weights.presets import DEFAULT_PRESET

from .server_kit import PNG_SIGNATURE, image_part, png_bytes, user
from .test_bad_input import URL, assert_error


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("NEXTGPT_API_KEYS", "a, b")
    monkeypatch.setenv("NEXTGPT_PORT", "9001")
    monkeypatch.setenv("NEXTGPT_CORS_ORIGINS", '["http://x.test"]')
    monkeypatch.setenv("NEXTGPT_ALLOW_REMOTE_URLS", "true")
    monkeypatch.delenv("NEXTGPT_WEIGHTS", raising=False)
    s = Settings()
    assert s.api_keys == ["a", "b"] and s.port == 9001 and s.cors_origins == ["http://x.test"]
    assert s.allow_remote_urls and s.weights == DEFAULT_PRESET and s.host == "127.0.0.1"
    assert s.media_limits().max_bytes == s.max_media_bytes
    assert s.decoder_limits().max_steps == s.max_decoder_steps


def test_cli_serve_arguments(monkeypatch):
    for name in ("NEXTGPT_PORT", "NEXTGPT_WEIGHTS", "NEXTGPT_HOST", "NEXTGPT_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["serve", "--weights", "/models/x", "--port", "9100", "--api-key", "k"])
    s = settings_from_args(args)
    assert (s.weights, s.port, s.host, s.api_keys) == ("/models/x", 9100, "127.0.0.1", ["k"])
    defaults = settings_from_args(build_parser().parse_args(["serve"]))
    assert (defaults.weights, defaults.host, defaults.port) == (DEFAULT_PRESET, "127.0.0.1", 8000)
    with pytest.raises(SystemExit) as help_exit:
        build_parser().parse_args(["serve", "--help"])
    assert help_exit.value.code == 0


@pytest.mark.parametrize("loc, param", [
    (("body", "messages", 0, "content", 1, "image_url", "image_url", "url"), "messages[0].content[1].image_url.url"),
    (("body", "messages", 0, "content", 2), "messages[0].content[2]"),
    (("body", "messages", 1, "content", 0, "text", "text"), "messages[1].content[0].text"),
    (("body", "image", "height"), "image.height"),
    (("body", "modalities", 1), "modalities[1]"),
])
def test_loc_to_param(loc, param):
    assert loc_to_param(loc) == param


def test_b64decode_variants():
    data = bytes(range(256))
    import base64

    standard = base64.b64encode(data).decode()
    assert b64decode(standard, "p") == data
    assert b64decode(standard.rstrip("="), "p") == data  # padding optional
    assert b64decode("\n".join(standard[i:i + 76] for i in range(0, len(standard), 76)), "p") == data
    assert b64decode(base64.urlsafe_b64encode(data).decode(), "p") == data
    with pytest.raises(APIError) as bad:
        b64decode("ab$d", "messages[0].content[1]")
    assert bad.value.status == 400 and bad.value.param == "messages[0].content[1]"


def test_codecs_round_trip():
    image = Image.fromarray(np.full((10, 12, 3), 200, np.uint8))
    assert Image.open(io.BytesIO(codecs.encode_png(image))).size == (12, 10)
    wave = np.sin(np.linspace(0, 100, 16000)).astype(np.float32) * 0.5
    decoded, rate = sf.read(io.BytesIO(codecs.encode_wav(wave)), dtype="float32")
    assert rate == 16000 and np.abs(decoded - wave).max() < 1e-3
    frames = np.random.default_rng(0).integers(0, 255, (5, 17, 21, 3), dtype=np.uint8)  # odd sides
    mp4 = codecs.encode_mp4(frames, fps=8)
    assert mp4[4:8] == b"ftyp" and mp4.find(b"moov") < mp4.find(b"mdat")  # faststart
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (s.codec_context.width, s.codec_context.height) == (22, 18)
        assert float(s.average_rate) == 8 and sum(1 for _ in c.decode(s)) == 5


def test_file_store_expires(tmp_path):
    store = FileStore(tmp_path, ttl_s=3600)
    kept = store.save(codecs.EncodedMedia("image", "image/png", PNG_SIGNATURE))
    gone = store.save(codecs.EncodedMedia("image", "image/png", PNG_SIGNATURE), ttl_s=1e-6)
    stray = tmp_path / ("file-" + "a" * 32 + ".png")
    stray.write_bytes(b"left by an earlier run")
    old = time.time() - 7200
    import os

    os.utime(stray, (old, old))
    deadline = time.time() + 5
    while store.get(gone.id) is not None:  # a microsecond TTL: expired by the next check
        assert time.time() < deadline
    assert store.get(kept.id).path.read_bytes() == PNG_SIGNATURE
    assert store.sweep() == 2 and not gone.path.exists() and not stray.exists() and kept.path.exists()
    assert store.get("../../etc/passwd") is None


def test_remote_fetch_refuses_private_addresses(live):
    for url in ("http://127.0.0.1:9/x.png", "http://localhost/x.png", "http://10.0.0.1/x.png",
                "http://[::1]/x.png", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(APIError) as refused:
            asyncio.run(remote.fetch(url, "messages[0].content[1]", 5, 1000))
        assert refused.value.status == 400 and refused.value.code == "remote_address_refused", url
    with pytest.raises(APIError) as scheme:
        asyncio.run(remote.fetch("ftp://example.com/x", "p", 5, 1000))
    assert scheme.value.status == 400


def test_remote_fetch_timeout_size_cap_and_status(live):
    """`check_address=False` lets the test fetch from its own loopback server."""
    body, ctype = asyncio.run(remote.fetch(live.base_url + "/health", "p", 5, 10_000, check_address=False))
    assert body == b'{"status":"ok"}' and ctype == "application/json"
    with pytest.raises(APIError) as big:
        asyncio.run(remote.fetch(live.base_url + "/health", "p", 5, 4, check_address=False))
    assert big.value.status == 413
    with pytest.raises(APIError) as missing:
        asyncio.run(remote.fetch(live.base_url + "/nope", "p", 5, 10_000, check_address=False))
    assert missing.value.status == 400 and "404" in missing.value.message


def test_remote_urls_enabled_still_refuse_loopback(http, live):
    with live.settings(allow_remote_urls=True):
        part = {"type": "image_url", "image_url": {"url": live.base_url + "/v1/files/x.png"}}
        assert_error(http.post(URL, json={"messages": [user(image_part(png_bytes()), part)]}), 400,
                     "messages[0].content[2]", "remote_address_refused")


def test_unexpected_errors_are_500_without_a_traceback(tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app

    app = create_app(Settings(files_dir=tmp_path))

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internal detail")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    error = assert_error(response, 500, None, "internal_error")
    assert error["type"] == "server_error" and "secret" not in response.text


def test_text_first_holds_decoders_while_any_text_is_pending():
    import threading

    from server.scheduler import TextFirst

    gate = TextFirst()
    assert gate.idle
    gate.enter()
    gate.enter()  # a second request waits for the LLM behind the first
    gate.leave()
    assert not gate.idle  # one is still pending: decoders keep waiting
    passed = threading.Event()
    waiter = threading.Thread(target=lambda: (gate.give_way(), passed.set()))
    waiter.start()
    assert not passed.wait(0.05)
    gate.leave()
    waiter.join(10)
    assert passed.is_set() and gate.idle
    gate.enter()
    gate.release_all()  # shutdown frees every waiting decoder
    assert gate.idle
