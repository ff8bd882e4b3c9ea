import copy
import dataclasses

import pytest

from tests.weights.fakehub import FakeHub
from tests.weights.release_files import populate


@pytest.fixture(scope="session")
def hub_server(tiny_dir):
    hub = FakeHub().start()
    populate(hub, tiny_dir)
    hub.pristine = copy.deepcopy(hub.repos)
    yield hub
    hub.stop()


@pytest.fixture()
def hub(hub_server, monkeypatch):
    """The stand-in hub, faults cleared; huggingface_hub allowed online (the suite runs offline)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset(hub_server)
    return hub_server


def reset(hub):
    hub.repos = copy.deepcopy(hub.pristine)
    for faults in (hub.truncate, hub.corrupt, hub.absent, hub.requests, hub.statuses):
        faults.clear()


def make_tiny_release(hub):
    """The release as the CLI knows it, with tiny architecture constants and ImageBind on the stand-in."""
    from weights.release import NEXTGPT_7B_TIVA_V0
    from weights.tiny import TINY_IMAGEBIND, tiny_config

    release = dataclasses.replace(NEXTGPT_7B_TIVA_V0, imagebind_kwargs=lambda: dict(TINY_IMAGEBIND),
                                  config=tiny_config)
    return release.with_url("imagebind", f"{hub.url}/files/imagebind_huge.pth")


@pytest.fixture()
def tiny_release(hub):
    return make_tiny_release(hub)


@pytest.fixture()
def fetch(hub, tiny_release):
    """fetch_release against the stand-in hub, quietly, with no token."""
    from weights.assemble import fetch_release

    def run(dest, groups=("llm", "image", "audio", "video"), release=None, **kwargs):
        kwargs.setdefault("token", False)
        kwargs.setdefault("endpoint", hub.url)
        log = []
        files = fetch_release(release or tiny_release, dest, groups, progress=False, log=log.append, **kwargs)
        return files, log

    return run
