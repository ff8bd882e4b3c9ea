"""Bad input: every case gets its documented status and OpenAI's error shape, naming the part, and
the server then answers a good request."""
from __future__ import annotations

import pytest

from .server_kit import (b64, body, bomb_png, image_part, mp4_bytes, png_bytes, user, video_part,
                         wav_bytes)

PNG = png_bytes()
WAV = wav_bytes(0.5)
MP4 = mp4_bytes()
URL = "/v1/chat/completions"


def assert_error(response, status: int, param: str | None = ..., code: str | None = ...) -> dict:
    assert response.status_code == status, response.text[:500]
    payload = response.json()
    assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "param", "code"}
    error = payload["error"]
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    assert "Traceback" not in response.text and 'File "' not in response.text
    if param is not ...:
        assert error["param"] == param, error
    if code is not ...:
        assert error["code"] == code, error
    return error


def assert_serving(http) -> None:
    response = http.post(URL, json={"messages": [{"role": "user", "content": "still there?"}],
                                    "max_tokens": 4, "modalities": ["text"]})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["object"] == "chat.completion"


def audio(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt}}


def image_url(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


CASES = {
    # name: (json body, status, param, code)
    "unknown part type": (body(user({"type": "image_file", "file_id": "x"})), 422, "messages[0].content[1]", ...),
    "part missing its url": (body(user({"type": "image_url", "image_url": {}})), 422,
                             "messages[0].content[1].image_url.url", ...),
    "unknown role": (body({"role": "robot", "content": "hi"}), 422, "messages[0].role", ...),
    "tool role": (body({"role": "tool", "content": "42"}, user()), 400, "messages[0].role", ...),
    "assistant last": (body(user(), {"role": "assistant", "content": "hi"}), 400, "messages", ...),
    "empty messages": ({"messages": []}, 422, "messages", ...),
    "empty user message": (body({"role": "user", "content": ""}), 400, "messages[0].content", ...),
    "invalid base64 data url": (body(user(image_url("data:image/png;base64,@@not*base64!!"))), 400,
                                "messages[0].content[1]", "invalid_base64"),
    "invalid base64 input_audio": (body(user({"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}})),
                                   400, "messages[0].content[1]", "invalid_base64"),
    "png declared as audio": (body(user(audio(PNG))), 415, "messages[0].content[1]", ...),
    "mp4 data url in an image part": (body(user(image_url(f"data:video/mp4;base64,{b64(PNG)}"))), 415,
                                      "messages[0].content[1]", ...),
    "text bytes as an image": (body(user(image_url(f"data:image/png;base64,{b64(b'hello world, not a picture')}"))),
                               415, "messages[0].content[1]", ...),
    "truncated png": (body(user(image_part(PNG[: len(PNG) * 2 // 3]))), 400, "messages[0].content[1]", ...),
    "truncated wav": (body(user(audio(WAV[: len(WAV) // 2]))), 400, "messages[0].content[1]", ...),
    "truncated mp4": (body(user(video_part(MP4[: len(MP4) // 3]))), 400, "messages[0].content[1]", ...),
    "zero-byte image": (body(user(image_url("data:image/png;base64,"))), 400, "messages[0].content[1]", ...),
    "zero-byte video": (body(user(video_part(b""))), 400, "messages[0].content[1]", ...),
    "decompression bomb png": (body(user(image_part(bomb_png()))), 413, "messages[0].content[1]", ...),
    "too many items": (body(user(*[image_part(png_bytes(8, 8, i)) for i in range(9)])), 413,
                       "messages[0].content[9]", "too_many_media_items"),
    "remote url while disabled": (body(user(image_url("https://example.com/cat.png"))), 400,
                                  "messages[0].content[1]", "remote_urls_disabled"),
    "file url": (body(user(image_url("file:///etc/passwd"))), 400, "messages[0].content[1]", "invalid_url"),
    "negative max_tokens": (body(max_tokens=-1), 422, "max_tokens", ...),
    "negative temperature": (body(temperature=-0.5), 422, "temperature", ...),
    "zero top_p": (body(top_p=0), 422, "top_p", ...),
    "negative seed": (body(seed=-5), 422, "seed", ...),
    "negative steps": (body(image={"num_inference_steps": -2}), 422, "image.num_inference_steps", ...),
    "zero frames": (body(video={"num_frames": 0}), 422, "video.num_frames", ...),
    "unknown decoder parameter": (body(image={"strength": 0.5}), 422, "image.strength", ...),
    "n of two": (body(n=2), 422, "n", ...),
    "unknown modality": (body(modalities=["text", "smell"]), 422, "modalities[1]", ...),
    "absurd max_tokens": (body(max_tokens=10**9), 400, "max_tokens", ...),
    "absurd height": (body(image={"height": 100_000}), 400, "image.height", "invalid_parameter"),
    "absurd steps": (body(image={"num_inference_steps": 10**6}), 400, "image.num_inference_steps", ...),
    "absurd audio length": (body(audio={"audio_length_in_s": 3600}), 400, "audio.audio_length_in_s", ...),
    "absurd frame count": (body(video={"num_frames": 1000}), 400, "video.num_frames", ...),
    "odd height": (body(image={"height": 33}), 400, "image.height", ...),
    "required but not accepted": (body(modalities=["text"], required_modalities=["image"]), 400,
                                  "required_modalities", ...),
    "unknown model": (body(model="gpt-4o"), 404, "model", "model_not_found"),
    "stop sequences": (body(stop=["\n"]), 400, "stop", ...),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request(http, name):
    payload, status, param, code = CASES[name]
    assert_error(http.post(URL, json=payload), status, param, code)
    assert_serving(http)


@pytest.mark.parametrize("raw, content_type, code", [
    (b'{"messages": [', "application/json", "invalid_json"),
    (b"", "application/json", "invalid_body"),
    (b"[1, 2]", "application/json", "invalid_body"),
    (b"messages=hi", "application/x-www-form-urlencoded", "invalid_body"),
])
def test_malformed_body(http, raw, content_type, code):
    assert_error(http.post(URL, content=raw, headers={"content-type": content_type}), 400, None, code)
    assert_serving(http)


def test_oversized_body(http, live):
    big = body(user(image_part(png_bytes(256, 256))))
    with live.settings(max_body_bytes=50_000):
        assert_error(http.post(URL, json=big), 413, None, "too_large")

        def chunks():  # no Content-Length: the server counts as it reads
            data = __import__("json").dumps(big).encode()
            for i in range(0, len(data), 16_384):
                yield data[i:i + 16_384]

        assert_error(http.post(URL, content=chunks(), headers={"content-type": "application/json"}), 413)
    assert_serving(http)


def test_limits_from_settings(http, live):
    with live.settings(max_media_bytes=2_000):
        assert_error(http.post(URL, json=body(user(image_part(png_bytes(64, 64))))), 413,
                     "messages[0].content[1]", "media_too_large")
    with live.settings(max_image_pixels=100):
        assert_error(http.post(URL, json=body(user(image_part()))), 413, "messages[0].content[1]")
    with live.settings(max_audio_seconds=1.0):
        assert_error(http.post(URL, json=body(user(audio(wav_bytes(2.0))))), 413, "messages[0].content[1]")
    with live.settings(max_media_items=1):
        assert_error(http.post(URL, json=body(user(image_part()), user(audio(WAV)))), 413,
                     "messages[1].content[1]", "too_many_media_items")
    assert_serving(http)


def test_unknown_routes_and_methods(http):
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get(URL), 405)
    assert_error(http.get("/v1/models/gpt-4o"), 404, "model", "model_not_found")
    assert_error(http.get("/v1/files/../../etc/passwd"), 404)
    assert_error(http.get("/v1/files/file-nope"), 404, "file_id", "file_not_found")
