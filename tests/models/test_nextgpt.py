"""The whole model on the tiny preset, CPU: every input and output path, history, determinism."""
import numpy as np
import pytest
import torch

from models.decoders import ParameterError
from models.generate import GenerationCancelled, SamplingParams, decode_one_token, generate, prefill
from models.media import MediaError
from models.types import MediaItem, Message
from tests import samples

FAST = SamplingParams(max_new_tokens=12, seed=3)


def user(text, *media):
    return Message("user", text, list(media))


def item(kind):
    data = {"image": samples.png, "audio": samples.wav, "video": samples.mp4}[kind]()
    return MediaItem.from_bytes(data, kind)


def test_text_only(tiny_model):
    deltas = []
    out = tiny_model.chat([user("Hello")], sampling=FAST, on_text=deltas.append)
    assert isinstance(out.text, str) and out.finish_reason in ("stop", "length")
    assert "".join(deltas).strip() == out.text  # the stream and the final text agree
    assert "[IMG" not in out.text and "<Img>" not in out.text
    assert out.usage.completion_tokens <= 12 and out.usage.prompt_tokens > 5
    assert {"encode", "llm", "projection"} <= set(out.timings)


@pytest.mark.parametrize("kinds", [("image",), ("audio",), ("video",), ("image", "audio", "video")])
def test_media_inputs(tiny_model, kinds):
    before = tiny_model.encoder.encoded + tiny_model.encoder.cache_hits
    out = tiny_model.chat([user("What is this?", *[item(k) for k in kinds])], sampling=FAST)
    assert out.usage.media_items == len(kinds)
    assert tiny_model.encoder.encoded + tiny_model.encoder.cache_hits == before + len(kinds)


def test_required_outputs_of_every_kind(tiny_model):
    progress = []
    out = tiny_model.chat([user("Show, play and animate")], required=["image", "audio", "video"],
                          sampling=FAST, on_progress=lambda m, s, t: progress.append((m, s, t)))
    assert out.image.size == (32, 32) and out.image.mode == "RGB"
    assert out.audio.dtype == np.float32 and out.audio.shape == (16000,)  # 1 s at 16 kHz
    assert out.video.frames.shape == (8, 32, 32, 3) and out.video.frames.dtype == np.uint8
    assert out.video.fps == 8
    assert {m for m, _, _ in progress} == {"image", "audio", "video"}
    assert all(s <= t for _, s, t in progress)
    assert {"image", "audio", "video"} <= set(out.timings)


def test_outputs_not_required_and_not_emitted_are_absent(tiny_model):
    out = tiny_model.chat([user("Hello")], modalities=["text"], sampling=FAST)
    assert out.image is None and out.audio is None and out.video is None


def test_required_must_be_allowed(tiny_model):
    with pytest.raises(ValueError, match="not in modalities"):
        tiny_model.chat([user("x")], modalities=["text"], required=["image"], sampling=FAST)


def test_bad_messages(tiny_model):
    with pytest.raises(ValueError):
        tiny_model.chat([], sampling=FAST)
    with pytest.raises(ValueError, match="role"):
        tiny_model.chat([Message("system", "x")], sampling=FAST)
    with pytest.raises(ValueError, match="last message"):
        tiny_model.chat([user("a"), Message("assistant", "b")], sampling=FAST)


def test_multi_turn_history_hits_the_encoder_cache(tiny_model):
    image = item("image")
    first = tiny_model.chat([user("Describe", image)], sampling=FAST)
    encoded = tiny_model.encoder.encoded
    hits = tiny_model.encoder.cache_hits
    history = [user("Describe", image), Message("assistant", first.text), user("And its colour?")]
    tiny_model.chat(history, sampling=FAST)
    assert tiny_model.encoder.encoded == encoded  # the earlier image was not encoded again
    assert tiny_model.encoder.cache_hits == hits + 1


def test_same_seed_same_outputs(tiny_model):
    run = lambda seed: tiny_model.chat([user("Draw")], required=["image"], sampling=SamplingParams(12, 1.0, 0.9, seed))
    a, b, c = run(11), run(11), run(12)
    assert a.text == b.text
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_hidden_states_are_at_the_generated_positions(tiny_model):
    """hidden[i] must be the last-layer state whose INPUT is generated id i (no off-by-one)."""
    llm = tiny_model.llm
    prompt = llm.embed_ids(torch.tensor([[1] + llm.tokenize("### Human: hi\n### Assistant:")]))
    gen, _ = generate(llm.lm, prompt, SamplingParams(8, 1.0, 1.0, 5), stop_ids=set())
    full = torch.cat([prompt, llm.embed_ids(torch.tensor([gen.ids]))], dim=1)
    with torch.no_grad():
        states = llm.lm.model(inputs_embeds=full).last_hidden_state[0]  # (T, H), post-norm
    n = prompt.shape[1]
    for i, h in enumerate(gen.hidden):
        assert torch.allclose(h, states[n + i], atol=1e-4), i


def test_malformed_signal_run_is_skipped_with_a_reason(tiny_model):
    from transformers import DynamicCache
    from models.generate import Generation

    llm = tiny_model.llm
    img = llm.signal_ids["image"]
    ids = [5, img[0], img[2], img[1], img[3], 6]
    cache = DynamicCache()
    prefill(llm.lm, llm.embed_ids(torch.tensor([[1, 5]])), cache)
    gen = Generation(ids=ids, hidden=[decode_one_token(llm.lm, t, cache)[1] for t in ids])
    conditions, skipped = tiny_model._conditions(gen, cache, {"image", "audio"}, {"audio"})
    assert "image" not in conditions and "malformed" in skipped["image"]
    assert conditions["audio"].shape == (1, 32)  # required audio was appended and projected


def test_cancel_stops_generation_and_decoding(tiny_model):
    with pytest.raises(GenerationCancelled):
        tiny_model.chat([user("x")], sampling=FAST, should_stop=lambda: True)
    calls = []

    def stop_in_decoder():
        calls.append(1)
        return len(calls) > 14  # past the LLM's checks, inside the image decoder's steps
    with pytest.raises(GenerationCancelled):
        tiny_model.chat([user("x")], required=["image"], sampling=SamplingParams(12, 1.0, 1.0, 1, ),
                        should_stop=stop_in_decoder)


@pytest.mark.parametrize("modality,params,param", [
    ("image", {"num_inference_steps": -1}, "image.num_inference_steps"),
    ("image", {"height": 100000}, "image.height"),
    ("image", {"width": 33}, "image.width"),
    ("audio", {"audio_length_in_s": 1e6}, "audio.audio_length_in_s"),
    ("video", {"num_frames": 1000}, "video.num_frames"),
    ("video", {"guidance_scale": float("nan")}, "video.guidance_scale"),
    ("image", {"colour": 1}, "image.colour"),
])
def test_decoder_parameters_are_bounded(tiny_model, modality, params, param):
    with pytest.raises(ParameterError) as err:
        tiny_model.chat([user("x")], sampling=FAST, decoder_params={modality: params})
    assert err.value.param == param


def test_decoder_parameters_reach_the_decoder(tiny_model):
    out = tiny_model.chat([user("x")], required=["image", "video"], sampling=FAST,
                          decoder_params={"image": {"height": 48, "width": 16}, "video": {"num_frames": 4}})
    assert out.image.size == (16, 48) and out.video.frames.shape[0] == 4


@pytest.mark.parametrize("data,kind", [(b"", "image"), (b"\x89PNG\r\n\x1a\nbroken", "image"),
                                       (samples.wav()[:30], "audio"), (b"not a video at all", "video")])
def test_bad_media_raise_media_errors(data, kind):
    with pytest.raises(MediaError):
        MediaItem.from_bytes(data, kind)


def test_a_model_without_some_decoders_serves_the_rest(tiny_dir, tmp_path):
    """A directory fetched with `--only llm,image` loads; asking for a missing output is an error."""
    import shutil

    from models.nextgpt import NextGPT

    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial, ignore=shutil.ignore_patterns("audio_decoder", "video_decoder"))
    model = NextGPT.from_pretrained(partial)
    assert set(model.decoders) == {"image"}
    out = model.chat([user("draw")], required=["image"], sampling=FAST)
    assert out.image is not None
    with pytest.raises(ValueError, match="no decoder"):
        model.chat([user("play")], required=["audio"], sampling=FAST)
    with pytest.raises(ParameterError):
        model.decoder_params("video", {})
