"""The nano model over HTTP through the unmodified `openai` client: it draws what it is asked and
answers what an uploaded image shows. Skipped when the nano weights are not on disk."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image, ImageDraw

from weights.nano import measure, world
from weights.nano.train import DEFAULT_OUT

pytestmark = pytest.mark.skipif(
    not (DEFAULT_OUT / "nextgpt.json").is_file(),
    reason=f"nano weights are not present at {DEFAULT_OUT} (train them with `nextgpt weights train-nano`)",
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from openai import OpenAI

    from server.background import BackgroundServer
    from server.settings import Settings

    settings = Settings(weights=str(DEFAULT_OUT), devices="cpu", files_dir=tmp_path_factory.mktemp("files"),
                        api_keys=[], warmup=True)
    with BackgroundServer(settings, ready_timeout_s=300) as server:
        yield OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _model(client) -> str:
    return client.models.list().data[0].id


def test_http_asked_for_a_red_circle_it_draws_one(client):
    result = client.chat.completions.create(
        model=_model(client), messages=[{"role": "user", "content": "Show me a red circle."}], seed=0,
        extra_body={"modalities": ["text", "image"]})
    message = result.choices[0].message
    images = (message.model_extra or {}).get("images")
    assert images, f"no image: {message.content!r} {result.choices[0].model_extra}"
    url = images[0]["image_url"]["url"]
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert measure.dominant_colour(img) == "red"
    assert measure.shape_of(img) == "circle"


def test_http_what_colour_is_this_blue_square(client):
    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).rectangle([18, 20, 46, 48], fill=world.COLOURS["blue"])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    result = client.chat.completions.create(
        model=_model(client), seed=0, extra_body={"modalities": ["text"]},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                               {"type": "text", "text": "What colour is this?"}]}])
    words = measure.words(result.choices[0].message.content)
    assert "blue" in words and not (words & (set(world.COLOURS) - {"blue"}))
