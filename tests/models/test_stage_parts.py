"""A process may load one stage only (a Ray Serve replica does); the LLM then takes media already
encoded elsewhere, and the answer is the one the whole model gives."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.generate import SamplingParams
from models.nextgpt import NextGPT
from models.types import MediaItem, Message
from server.stages import encode_stage, unencoded_items, with_embeddings

SAMPLING = SamplingParams(max_new_tokens=8, seed=2)


def photo() -> MediaItem:
    pixels = np.random.default_rng(5).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    return MediaItem("image", Image.fromarray(pixels), key="image:test-stage-parts")


def test_a_stage_loads_alone(tiny_dir):
    encoder_only = NextGPT.from_pretrained(tiny_dir, stages=("encoder",))
    assert encoder_only.encoder is not None and encoder_only.llm is None and not encoder_only.decoders
    video_only = NextGPT.from_pretrained(tiny_dir, stages=("video",))
    assert video_only.llm is None and set(video_only.decoders) == {"video"}


def test_llm_alone_with_media_encoded_elsewhere_answers_as_the_whole_model(tiny_dir, tiny_model):
    messages = [Message("user", "What is this? Draw it.", [photo()])]
    whole = tiny_model.language(messages, required=["image"], sampling=SAMPLING)

    encoder = NextGPT.from_pretrained(tiny_dir, stages=("encoder",)).encoder
    llm_only = NextGPT.from_pretrained(tiny_dir, stages=("llm",), decoder_names=["image", "audio", "video"])
    embeddings = encode_stage(encoder, unencoded_items(messages))
    encoded = with_embeddings(messages, embeddings)
    assert encoded[0].media[0].value is None and unencoded_items(encoded) == []
    apart = llm_only.language(encoded, required=["image"], sampling=SAMPLING)

    assert apart.ids == whole.ids and apart.text == whole.text
    assert torch.allclose(apart.conditions["image"], whole.conditions["image"], atol=1e-5)
