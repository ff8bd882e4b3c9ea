"""WS /v1/chat/ws: a three-turn conversation with media, cancel mid-generation, reset, errors."""
from __future__ import annotations

import io
import json
from contextlib import contextmanager

import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .server_kit import SLOW_VIDEO, SMALL, audio_part, image_part, png_bytes, user, wav_bytes

TIMEOUT = 60


def send(ws, message: dict) -> None:
    ws.send(json.dumps(message))


def recv(ws) -> dict:
    return json.loads(ws.recv(timeout=TIMEOUT))


def until(ws, kind: str) -> tuple[dict, list[dict]]:
    """Messages up to and including the first of type `kind`."""
    seen = []
    while True:
        message = recv(ws)
        seen.append(message)
        if message["type"] == kind:
            return message, seen
        assert message["type"] != "error", message


def turn(ws, *parts, text: str, rid: str, **extra) -> tuple[dict, list[dict]]:
    send(ws, {"type": "chat.request", "request_id": rid, "messages": [user(*parts, text=text)],
              "max_tokens": 8, "seed": 1, **SMALL, **extra})
    done, seen = until(ws, "done")
    assert all(m.get("request_id") == rid for m in seen)
    return done, seen


@contextmanager
def session(ws_url: str):
    """A WebSocket session on the tiny model, past its `session.created` greeting."""
    with connect(ws_url, open_timeout=TIMEOUT, max_size=2**26) as socket:
        hello = recv(socket)
        assert hello["type"] == "session.created" and hello["model"] == "nextgpt-tiny"
        yield socket


@pytest.fixture()
def ws(live):
    with session(live.ws_url) as socket:
        yield socket


def test_three_turns_with_media_and_encoder_cache(ws, live):
    hits = lambda: live.metric("nextgpt_encoder_cache_hits_total")  # noqa: E731
    encoded = lambda: live.metric("nextgpt_encoder_items_encoded_total")  # noqa: E731

    # turn 1: an image in, an image out
    h0, e0 = hits(), encoded()
    # media no earlier test sent, so the first sight of each is a cache miss
    done1, seen = turn(ws, image_part(png_bytes(40, 36, seed=101)), text="What is this? Draw one too.", rid="t1",
                       required_modalities=["image"])
    kinds = [m["type"] for m in seen]
    assert "text.delta" in kinds and "media.progress" in kinds and kinds[-1] == "done"
    assert kinds.index("media.done") > kinds.index("media.progress")
    media = next(m for m in seen if m["type"] == "media.done")
    assert media["modality"] == "image" and media["mime_type"] == "image/png"
    assert media["url"].startswith("data:image/png;base64,")
    assert done1["finish_reason"] in ("stop", "length")
    assert done1["usage"]["prompt_tokens_details"]["media_items"] == 1
    assert encoded() - e0 == 1 and hits() == h0

    # turn 2: text only; the history holds turn 1's image and the generated image
    h1, e1 = hits(), encoded()
    done2, _ = turn(ws, text="And what colour was it?", rid="t2", modalities=["text"])
    assert done2["usage"]["prompt_tokens_details"]["media_items"] == 2
    assert hits() - h1 == 1  # the user's image of turn 1: from the cache, not encoded again
    assert encoded() - e1 == 1  # only the assistant's generated image is new
    assert done2["usage"]["prompt_tokens"] > done1["usage"]["prompt_tokens"]

    # turn 3: an audio clip in; everything earlier comes from the cache
    h2, e2 = hits(), encoded()
    done3, _ = turn(ws, audio_part(wav_bytes(0.5, freq=523.0)), text="What is this sound?", rid="t3", modalities=["text"])
    assert done3["usage"]["prompt_tokens_details"]["media_items"] == 3
    assert hits() - h2 == 2 and encoded() - e2 == 1
    assert done3["usage"]["prompt_tokens"] > done2["usage"]["prompt_tokens"]


def test_media_done_as_file_url(ws, live):
    import httpx

    _, seen = turn(ws, text="Draw.", rid="u1", required_modalities=["image"], media_format="url")
    media = next(m for m in seen if m["type"] == "media.done")
    assert media["url"].startswith(live.base_url + "/v1/files/") and media["file_id"]
    response = httpx.get(media["url"])
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (32, 32)


def test_cancel_mid_generation_then_continue(ws, live):
    send(ws, {"type": "chat.request", "request_id": "long", "messages": [user(text="A long film, please.")],
              "max_tokens": 8, "seed": 1, "required_modalities": ["video"], "video": SLOW_VIDEO})
    progress, _ = until(ws, "media.progress")  # the decoder is drawing
    assert progress["modality"] == "video" and progress["total"] == SLOW_VIDEO["num_inference_steps"]
    cancelled = live.metric("nextgpt_requests_cancelled_total", reason="cancel")
    send(ws, {"type": "cancel"})
    done, seen = until(ws, "done")
    assert done["finish_reason"] == "cancelled" and done["request_id"] == "long"
    steps = [m["step"] for m in seen if m["type"] == "media.progress"]
    assert not steps or max(steps) < SLOW_VIDEO["num_inference_steps"]
    assert live.metric("nextgpt_requests_cancelled_total", reason="cancel") == cancelled + 1
    live.scheduler_idle()
    # the socket goes on; the cancelled turn did not enter the history
    done2, _ = turn(ws, text="Hello again", rid="after", modalities=["text"])
    assert done2["usage"]["prompt_tokens_details"]["media_items"] == 0
    assert done2["finish_reason"] in ("stop", "length")


def test_cancel_during_text(ws, live):
    """A cancel sent right after the request stops it wherever it is (LLM included)."""
    send(ws, {"type": "chat.request", "request_id": "c", "messages": [user(text="Talk a lot.")],
              "max_tokens": 1000, "required_modalities": ["video"], "video": SLOW_VIDEO})
    send(ws, {"type": "cancel"})
    done, _ = until(ws, "done")
    assert done["finish_reason"] == "cancelled"
    live.scheduler_idle()


def test_reset_clears_history(ws):
    first, _ = turn(ws, image_part(), text="Remember this.", rid="r1", modalities=["text"])
    second, _ = turn(ws, text="What was it?", rid="r2", modalities=["text"])
    assert second["usage"]["prompt_tokens_details"]["media_items"] == 1
    send(ws, {"type": "reset"})
    assert recv(ws)["type"] == "reset.done"
    third, _ = turn(ws, text="What was it?", rid="r3", modalities=["text"])
    assert third["usage"]["prompt_tokens_details"]["media_items"] == 0
    assert third["usage"]["prompt_tokens"] < second["usage"]["prompt_tokens"]


def test_errors_keep_the_socket_open(ws, live):
    ws.send("{not json")
    err = recv(ws)
    assert err["type"] == "error" and err["status"] == 400 and err["error"]["code"] == "invalid_json"
    send(ws, {"type": "dance"})
    assert recv(ws)["error"]["code"] == "unknown_message_type"
    send(ws, {"type": "chat.request", "request_id": "bad", "messages": [{"role": "user", "content": [{"type": "x"}]}]})
    err = recv(ws)
    assert err["status"] == 422 and err["error"]["param"] == "messages[0].content[0]" and err["request_id"] == "bad"
    send(ws, {"type": "chat.request", "request_id": "asst", "messages": [{"role": "assistant", "content": "hi"}]})
    err = recv(ws)
    assert err["status"] == 400 and err["error"]["param"] == "messages[0].role"
    send(ws, {"type": "chat.request", "request_id": "png-as-audio",
              "messages": [user(audio_part(data=bytes.fromhex("89504e470d0a1a0a") + b"\0" * 64))]})
    err = recv(ws)
    assert err["status"] == 415 and err["error"]["param"] == "messages[0].content[1]"
    # busy: a second request while one runs
    send(ws, {"type": "chat.request", "request_id": "slow", "messages": [user(text="Film.")], "max_tokens": 4,
              "required_modalities": ["video"], "video": SLOW_VIDEO})
    until(ws, "media.progress")
    send(ws, {"type": "chat.request", "request_id": "second", "messages": [user(text="Hi")]})
    err, _ = until_error(ws)
    assert err["status"] == 409 and err["request_id"] == "second"
    send(ws, {"type": "cancel"})
    assert until(ws, "done")[0]["finish_reason"] == "cancelled"
    live.scheduler_idle()
    done, _ = turn(ws, text="Fine now?", rid="ok", modalities=["text"])
    assert done["finish_reason"] in ("stop", "length")


def until_error(ws) -> tuple[dict, list[dict]]:
    seen = []
    while True:
        message = recv(ws)
        seen.append(message)
        if message["type"] == "error":
            return message, seen


def test_ws_api_key(live):
    with live.settings(api_keys=["sesame"]):
        with pytest.raises(InvalidStatus) as refused:
            connect(live.ws_url, open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["error"]["code"] == "missing_api_key"
        with pytest.raises(InvalidStatus):
            connect(live.ws_url, additional_headers={"Authorization": "Bearer wrong"}, open_timeout=TIMEOUT)
        for kwargs in ({"additional_headers": {"Authorization": "Bearer sesame"}}, {}):
            url = live.ws_url + ("" if kwargs else "?api_key=sesame")
            with connect(url, open_timeout=TIMEOUT, **kwargs) as socket:
                assert recv(socket)["type"] == "session.created"
