"""The `imagebind` stage without trained weights: its parameter groups, its vision and audio
batches, and the contrast it trains the towers with (partial captions, unjudged pairs)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from weights.nano import config, world


def test_imagebind_positions_start_at_the_tokens_scale_and_the_stems_learn_slowly(tmp_path, monkeypatch):
    from weights.nano import common, encoder

    seen = {}

    class Stop(Exception):
        pass

    def before_training(stage, ctx, params, step, lr, param_groups=None, modules=None, **kwargs):
        seen.update(groups=param_groups, model=modules["model"])
        raise Stop

    monkeypatch.setattr(encoder, "train_loop", before_training)
    with pytest.raises(Stop):
        encoder.stage_imagebind(common.Context(work=tmp_path))
    stems, rest = seen["groups"]
    assert stems["lr_scale"] == encoder.STEM_LR_SCALE and "lr_scale" not in rest
    assert len(stems["params"]) == 4  # the vision conv; the audio conv and its norm's weight and bias
    for tower in ("vision", "audio"):
        pos = seen["model"].modality_preprocessors[tower].pos_embedding_helper.pos_embed
        assert 0.8 < float(pos.detach().std()) < 1.2


def test_the_imagebind_batch_shows_an_image_as_a_clip_of_two_equal_frames():
    from models import preprocess
    from weights.nano import encoder

    rng = random.Random(0)
    shapes = [world.random_shape(rng, world.shape_pairs()) for _ in range(3)]
    images = [preprocess.image_to_tensor(world.encoder_view(s, rng)) for s in shapes]
    clips = [encoder.video_clip_tensor(world.random_video(rng, world.shape_pairs()).frames()) for _ in range(2)]
    batch = encoder.vision_batch(images, clips)
    assert batch.shape == (5, 1, 3, 2, 224, 224)  # (B, 1 clip, C, T, H, W)
    for i, image in enumerate(images):
        assert torch.equal(batch[i, 0, :, 0], image) and torch.equal(batch[i, 0, :, 1], image)
    for j, clip in enumerate(clips):
        assert torch.equal(batch[3 + j, 0], clip)
    assert not torch.equal(clips[0][:, 0], clips[0][:, 1])  # a clip's two frames differ: it moves


def test_the_imagebind_stage_draws_only_the_end_frames_and_flips_them_for_a_clip_played_backwards():
    from weights.nano import encoder

    video = world.random_video(random.Random(1), world.shape_pairs())
    frames = video.frames(size=64)
    assert np.array_equal(video.end_frames(size=64), frames[[0, -1]])
    clips = encoder.video_clip_tensors([video.end_frames(size=64)], reversed_first=1)
    assert torch.equal(clips[0], encoder.video_clip_tensor(frames))
    assert torch.equal(clips[1], encoder.video_clip_tensor(frames[::-1].copy()))


def test_the_imagebind_stage_runs_each_distinct_audio_clip_once_and_gets_the_models_embedding():
    from models import preprocess
    from weights.nano import encoder

    rng = random.Random(2)
    tones = [world.random_tone(rng, world.tone_pairs(), seconds=s) for s in (1.024, 2.0, 2.4)]
    waves = [t.wave() for t in tones]
    assert [len(preprocess.distinct_audio_clips(w)[0]) for w in waves] == [1, 1, 3]
    torch.manual_seed(0)
    model = encoder.build().eval()
    with torch.no_grad():
        ours = encoder.audio_embeddings(model, waves)
        stock = model({"audio": torch.stack([preprocess.audio_to_tensor(w) for w in waves])})["audio"]
    assert ours.shape == stock.shape == (3, config.IMAGEBIND["out_embed_dim"])
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4)


def test_partial_captions_are_positives_for_every_item_with_their_attributes():
    """The contrast ImageBind's towers are trained with: "a low tone" is a positive for every low
    tone, whatever its timbre, never a negative."""
    from weights.nano import contrastive

    tones = [world.ToneSample("low", "pure", 250.0, 0.3), world.ToneSample("low", "buzzy", 260.0, 0.3),
             world.ToneSample("high", "buzzy", 2000.0, 0.3), world.ToneSample(None, "buzzy", 1500.0, 0.3)]
    caps = [("a low pure tone", frozenset({"low", "pure"})), ("a low tone", frozenset({"low"})),
            ("a buzzy tone", frozenset({"buzzy"})), ("a buzzy tone", frozenset({"buzzy"}))]
    texts, own, pos, unknown = contrastive.caption_sets(tones, caps)
    assert texts == ["a buzzy tone", "a low pure tone", "a low tone"] and own == [1, 2, 0, 0]
    assert pos.tolist() == [[False, True, True], [True, False, True], [True, False, False], [True, False, False]]
    assert not unknown.any()  # the 1.5 kHz tone is high by the world's measure: "low" is a true negative
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    matched = contrastive.contrast(text[own], text, own, pos, 10.0, unknown)
    swapped = contrastive.contrast(text[[2, 1, 1, 2]], text, own, pos, 10.0, unknown)
    assert float(matched) < float(swapped)


def test_a_tone_at_an_unnamed_pitch_is_unjudged_only_by_captions_that_would_fit_it_if_its_pitch_were_named():
    from weights.nano import contrastive

    whistle = world.ToneSample(None, "buzzy", 2600.0, 0.3)  # high by `world.pitch_of`, never called so
    judged = {c: contrastive.unjudged(whistle, frozenset(c.split()))
              for c in ("high", "high buzzy", "high pure", "medium", "low buzzy", "buzzy")}
    assert judged == {"high": True, "high buzzy": True, "high pure": False, "medium": False,
                      "low buzzy": False, "buzzy": False}
    assert not contrastive.unjudged(world.ToneSample("high", "pure", 2000.0, 0.3), frozenset({"high"}))
    assert not contrastive.unjudged(world.ShapeSample("gray", "circle", 16.0, 16.0, 8.0), frozenset({"circle"}))


def test_an_unjudged_pair_counts_neither_way_in_the_contrast():
    """Moving the unnamed-pitch tone's embedding anywhere off its own caption's direction (towards
    "a high tone", say) leaves the loss as it was; counted as a negative, it would not."""
    from weights.nano import contrastive

    tones = [world.ToneSample("high", "pure", 2000.0, 0.3), world.ToneSample(None, "buzzy", 2600.0, 0.3)]
    caps = [("a high tone", frozenset({"high"})), ("a buzzy tone", frozenset({"buzzy"}))]
    texts, own, pos, unknown = contrastive.caption_sets(tones, caps)
    assert texts == ["a buzzy tone", "a high tone"] and unknown.tolist() == [[False, False], [False, True]]
    g = torch.Generator().manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=-1)
    media = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=-1)
    off_own = text[1] - (text[1] @ text[0]) * text[0]  # towards "a high tone", orthogonal to "a buzzy tone"
    moved = media.clone()
    moved[1] = media[1] + 0.5 * off_own
    for mask, unchanged in ((unknown, True), (None, False)):
        before = float(contrastive.contrast(media, text, own, pos, 10.0, mask))
        after = float(contrastive.contrast(moved, text, own, pos, 10.0, mask))
        assert (abs(before - after) < 1e-6) == unchanged, (before, after)
