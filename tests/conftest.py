import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a hub

from tests.live_server import http, live, model_id  # noqa: E402,F401  (one server for every suite)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir():
    from weights.presets import resolve

    return resolve("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from models.nextgpt import NextGPT

    model = NextGPT.from_pretrained(tiny_dir)
    yield model
    model.close()

