"""The unmodified `openai` package against the live server: media in, media out, streaming, files."""
from __future__ import annotations

import base64
import io

import av
import httpx
import numpy as np
import pytest
import soundfile as sf
from openai import OpenAI
from PIL import Image

from .server_kit import SMALL, audio_part, image_part, user, video_part


@pytest.fixture()
def client(live) -> OpenAI:
    return OpenAI(base_url=live.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def decode_data_url(url: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert url.startswith(prefix), url[:40]
    return base64.b64decode(url[len(prefix):])


def read_video(data: bytes) -> tuple[np.ndarray, str, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        codec, pix_fmt = stream.codec_context.name, stream.codec_context.pix_fmt
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    return frames, codec, pix_fmt


def test_models_list(client, model_id):
    ids = [m.id for m in client.models.list().data]
    assert ids == [model_id] == ["nextgpt-tiny"]


def test_media_in_and_all_media_out(client, model_id):
    """An image, audio and video in; an image, audio and video out as required modalities."""
    result = client.chat.completions.create(
        model=model_id, messages=[user(image_part(), audio_part(), video_part(), text="Describe, then show me.")],
        max_tokens=8, seed=3,
        extra_body={"modalities": ["text", "image", "audio", "video"],
                    "required_modalities": ["image", "audio", "video"], **SMALL})
    choice = result.choices[0]
    message = choice.message
    assert isinstance(message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens > 3 and result.usage.completion_tokens >= 1
    assert result.usage.prompt_tokens_details.model_extra["media_items"] == 3
    extra = message.model_extra
    png = decode_data_url(extra["images"][0]["image_url"]["url"], "image/png")
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    wave, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)))
    assert rate == 16000 and wave.ndim == 1 and len(wave) == 8000
    assert message.audio.format == "wav" if hasattr(message.audio, "format") else True
    frames, codec, pix_fmt = read_video(decode_data_url(extra["videos"][0]["video_url"]["url"], "video/mp4"))
    assert frames.shape == (8, 32, 32, 3) and codec == "h264" and pix_fmt == "yuv420p"
    assert not choice.model_extra.get("skipped_modalities")


def test_plain_string_messages_and_history(client, model_id):
    result = client.chat.completions.create(
        model=model_id, max_tokens=6, seed=1, extra_body={"modalities": ["text"]},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Draw a cat."}])
    assert isinstance(result.choices[0].message.content, str)
    assert getattr(result.choices[0].message, "images", None) is None


def test_streaming_text_then_media(client, model_id):
    params = dict(model=model_id, messages=[user(image_part(), text="Show me a red square.")], max_tokens=12,
                  seed=5, extra_body={"required_modalities": ["image"], "modalities": ["text", "image"], **SMALL})
    kinds, text, images, finish, skipped = [], "", [], None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **params):
        extra = chunk.model_extra or {}
        if extra.get("progress"):
            kinds.append("progress")
            assert extra["progress"]["modality"] == "image"
            assert 1 <= extra["progress"]["step"] <= extra["progress"]["total"]
        if not chunk.choices:
            assert chunk.usage is not None and chunk.usage.completion_tokens >= 1
            kinds.append("usage")
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            text += choice.delta.content
            kinds.append("text")
        if (choice.delta.model_extra or {}).get("images"):
            images += choice.delta.model_extra["images"]
            kinds.append("image")
        if choice.finish_reason:
            finish, skipped = choice.finish_reason, (choice.model_extra or {}).get("skipped_modalities")
    assert finish in ("stop", "length") and not skipped
    # text streams first and never waits for the decoder; progress precedes the image
    assert kinds.index("progress") > max(i for i, k in enumerate(kinds) if k == "text") if "text" in kinds else True
    assert kinds.index("image") > kinds.index("progress") and kinds[-1] == "usage"
    png = decode_data_url(images[0]["image_url"]["url"], "image/png")
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    # the same request without streaming gives the same text (same seed, same model); the tiny
    # model's random bytes can form invalid UTF-8, which a stream cannot take back once sent
    whole = client.chat.completions.create(**params).choices[0].message.content
    if whole.isprintable() and text.isprintable():
        assert whole == text.strip()
    else:
        assert len(whole) > 0 and len(text) > 0


def test_media_format_url_then_fetch(client, live, model_id):
    result = client.chat.completions.create(
        model=model_id, messages=[user(text="Play a tone and show it.")], max_tokens=6, seed=2,
        extra_body={"required_modalities": ["image", "audio", "video"], "media_format": "url", **SMALL})
    message = result.choices[0].message.model_extra
    image_url = message["images"][0]["image_url"]["url"]
    video_url = message["videos"][0]["video_url"]["url"]
    audio = result.choices[0].message.audio
    assert audio.data is None and audio.model_extra["url"].startswith(live.base_url + "/v1/files/file-")
    for url, mime in ((image_url, "image/png"), (video_url, "video/mp4"), (audio.model_extra["url"], "audio/wav")):
        assert url.startswith(live.base_url + "/v1/files/file-")
        response = httpx.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == mime
        if mime == "image/png":
            assert Image.open(io.BytesIO(response.content)).size == (32, 32)
        elif mime == "video/mp4":
            assert read_video(response.content)[0].shape == (8, 32, 32, 3)
        else:
            assert sf.info(io.BytesIO(response.content)).samplerate == 16000
    missing = httpx.get(live.base_url + "/v1/files/file-" + "0" * 32)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"


def test_unproduced_output_is_reported(client, model_id):
    """An accepted output the model did not ask for is named in skipped_modalities with a reason."""
    result = client.chat.completions.create(
        model=model_id, messages=[user(text="Hello")], max_tokens=6, seed=4,
        extra_body={"modalities": ["text", "audio"], **SMALL})
    choice = result.choices[0]
    produced = choice.message.audio is not None
    skipped = (choice.model_extra or {}).get("skipped_modalities") or {}
    assert produced or "audio" in skipped and skipped["audio"]
