"""The tiny model's language model, shared by the generation tests."""
import pytest


@pytest.fixture(scope="module")
def lm(tiny_model):
    return tiny_model.llm.lm


@pytest.fixture(scope="module")
def stop_ids(tiny_model):
    return tiny_model.llm.stop_ids
