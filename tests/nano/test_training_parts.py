"""The nano training package without trained weights: the world, the measures, the tokenizer's
signal runs, the video UNet's start from the image UNet, the vocoder features, resumability."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from weights.nano import audio, config, dialogue, measure, train, world


def test_measures_read_ground_truth_media_perfectly():
    rng = random.Random(1)
    for _ in range(60):
        s = world.random_shape(rng, world.shape_pairs(None))
        img = s.image(rng.choice((32, 64)))
        assert measure.dominant_colour(img) == s.colour and measure.shape_of(img) == s.shape, s
    for _ in range(40):
        v = world.random_video(rng, world.shape_pairs(None))
        assert measure.direction_of(v.frames()) == v.direction, v
    for _ in range(30):
        t = world.random_tone(rng, world.tone_pairs(None))
        assert measure.pitch_class(t.wave()) == t.pitch, t


def test_world_is_a_function_of_the_seed_and_hides_its_held_out_pairs():
    a = [world.random_shape(random.Random("s"), world.shape_pairs()) for _ in range(5)]
    b = [world.random_shape(random.Random("s"), world.shape_pairs()) for _ in range(5)]
    assert a == b
    rng, d = random.Random(0), dialogue.Dialogues()
    seen = set()
    for _ in range(400):
        for turn in d.conversation(rng):
            for m in turn.media.values():
                if not isinstance(m, world.ToneSample):
                    seen.add((m.colour, m.shape))
                else:
                    assert (m.pitch, m.timbre) not in world.HELD_OUT_TONES
            text = turn.text + (turn.gen[1] if turn.gen else "")
            for colour, shape in world.HELD_OUT_SHAPES:
                assert world.article(f"{colour} {shape}") not in text
    assert not seen & world.HELD_OUT_SHAPES


def test_unnamed_pitches_hold_every_timbre_at_every_register():
    """30% of the encoder's tones lie in bands between and around the named pitches, every timbre
    in every band: the encoder hears them captioned by timbre alone (its timbre features cannot
    lean on the pitches each timbre came with); the audio decoder's captions name their band's
    register word, as a named tone's name its pitch, so that there pitch and timbre are
    uncorrelated. No conversation says a register word."""
    from weights.nano import contrastive, dialogue

    rng = random.Random(0)
    tones = [world.unnamed_pitch_tone(rng) for _ in range(300)]
    assert {(t.register, t.timbre) for t in tones} == set(itertools.product(world.REGISTERS, world.TIMBRES))
    assert all(t.pitch is None and any(lo <= t.freq <= hi for lo, hi in world.UNNAMED_PITCHES) for t in tones)
    assert not any(lo <= t.freq <= hi for t in tones for lo, hi in world.PITCHES.values())
    for t in tones[:30]:  # the encoder's
        assert contrastive.tone_captions(t, rng) == (f"a {t.timbre} tone", {t.timbre})
        assert contrastive.attributes(t) == {t.register, t.timbre}
        assert t.caption == f"a {t.register} {t.timbre} tone"
    decoder_captions = {contrastive.tone_captions(t, rng, registers=True) for t in tones[:100]}
    assert {attrs for _, attrs in decoder_captions} >= {frozenset({"bass"}), frozenset({"buzzy"}),
                                                       frozenset({"treble", "pure"})}
    named = world.random_tone(rng, world.tone_pairs())
    assert named.register is None and contrastive.attributes(named) == {named.pitch, named.timbre}
    words = {w.strip(".,?!()[]") for line in dialogue.corpus(n=400) for w in line.lower().split()}
    assert "beeping" in words and not set(world.REGISTERS) & words


def test_play_requests_name_a_pair_a_pitch_alone_or_a_timbre_alone():
    """NExT-GPT's stages ask for timbres alone too (`bank.TIMBRE_REQUESTS`); the text-only
    pretraining's stream draws none, as before they existed."""
    from weights.nano import bank, dialogue

    def kinds(d, seed=0):
        rng = random.Random(seed)
        return [(p is not None, t is not None) for p, t in (d.play_request(rng) for _ in range(2000))]

    asked = kinds(dialogue.Dialogues(False, timbre_requests=bank.TIMBRE_REQUESTS))
    assert abs(asked.count((False, True)) / len(asked) - bank.TIMBRE_REQUESTS) < 0.03
    assert asked.count((True, False)) > 0 and asked.count((True, True)) > 0
    assert (False, True) not in kinds(dialogue.Dialogues(None))
    user, reply = dialogue.play_turns(random.Random(0), None, "buzzy")
    assert "buzzy tone" in user.text and reply.gen == ("audio", "a buzzy tone")


def _partials(wave: np.ndarray, threshold: float = 0.05) -> list[float]:
    """The frequencies (Hz) of a wave's spectral peaks above `threshold` of the highest."""
    mag = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    freqs = np.fft.rfftfreq(len(wave), 1.0 / world.SAMPLE_RATE)
    is_peak = (mag[1:-1] > mag[:-2]) & (mag[1:-1] >= mag[2:]) & (mag[1:-1] > threshold * mag.max())
    return list(freqs[1:-1][is_peak])


def _loudness_rhythm(wave: np.ndarray) -> tuple[float, float]:
    """(the strongest rate (Hz) at which a wave's loudness rises and falls, how deep: that rate's
    share of the loudness envelope's spread), from 5-ms frames' RMS."""
    frames = wave[: len(wave) // 80 * 80].reshape(-1, 80)
    env = np.sqrt((frames ** 2).mean(1))
    env = env - env.mean()
    spec = np.abs(np.fft.rfft(env))
    rates = np.fft.rfftfreq(len(env), 80 / world.SAMPLE_RATE)
    k = int(spec[1:].argmax()) + 1
    return float(rates[k]), float(spec[k] / (np.sqrt((spec[1:] ** 2).sum()) + 1e-12))


def test_a_buzzy_tone_pulses_within_its_own_band_at_every_pitch():
    """From the lowest unnamed band to the top of "high", a buzzy tone's loudness pulses
    BUZZ_HZ times a second and every partial lies within a few pulse rates of its fundamental (no
    harmonic above its band): a held-out high buzzy tone sounds like every buzzy tone the encoder
    was taught, shifted. A pure tone neither pulses nor spreads."""
    bands = [*world.PITCHES.values(), *world.UNNAMED_PITCHES]
    for freq in [f for band in bands for f in band]:
        wave = world.ToneSample(None, "buzzy", freq, 0.4, seconds=1.0, phase=0.3).wave()
        rate, share = _loudness_rhythm(wave)
        assert abs(rate - world.BUZZ_HZ) < 1.0 and share > 0.5, (freq, rate, share)
        found = _partials(wave)
        assert all(abs(f - freq) <= 5 * world.BUZZ_HZ for f in found), (freq, found)
        assert min(abs(f - freq) for f in found) < 2, (freq, found)
        pure = world.ToneSample(None, "pure", freq, 0.4, seconds=1.0).wave()
        rms = np.sqrt((pure[400:-400].reshape(-1, 400) ** 2).mean(1))  # 25-ms frames, past the fades
        assert len(_partials(pure)) == 1 and rms.std() < 0.05 * rms.mean()


def test_the_audio_decoders_hear_every_timbre_at_pitches_no_caption_names():
    """A quarter of the audio decoders' tones come from the unnamed bands, captioned by register
    and timbre (or, as the named ones can be, by register alone)."""
    from weights.nano.decoders import UNNAMED_TONES, tone_batch

    waves, captions, tones = tone_batch(random.Random(0), 400)
    assert waves.shape == (400, round(world.AUDIO_SECONDS * world.SAMPLE_RATE))
    unnamed = [(c, t) for c, t in zip(captions, tones) if t.pitch is None]
    assert abs(len(unnamed) / 400 - UNNAMED_TONES) < 0.06
    assert {t.timbre for _, t in unnamed} == set(world.TIMBRES)
    assert all(c == f"a {t.register} {t.timbre} tone" for c, t in unnamed)
    _, dropped, dropped_tones = tone_batch(random.Random(0), 400, drop_timbre=0.3)
    register_only = [c for c, t in zip(dropped, dropped_tones) if t.pitch is None and c == f"a {t.register} tone"]
    assert 0.2 < len(register_only) / sum(t.pitch is None for t in dropped_tones) < 0.4
    assert all(c == t.caption and (t.pitch, t.timbre) not in world.HELD_OUT_TONES
               for c, t in zip(captions, tones) if t.pitch is not None)
    _, _, none_unnamed = tone_batch(random.Random(0), 50, unnamed=0.0)
    assert all(t.pitch is not None for t in none_unnamed)


def test_only_the_text_pretraining_reads_held_out_phrases():
    """The Vicuna stand-in's text names every combination; no conversation with media does."""
    rng = random.Random(0)
    text = " ".join(dialogue.conversation_text(dialogue.Dialogues(held_out=None).conversation(rng))
                    for _ in range(600))
    for colour, shape in world.HELD_OUT_SHAPES:
        assert world.article(f"a {colour} {shape}") in text
    for pitch, timbre in world.HELD_OUT_TONES:
        assert f"{pitch} {timbre}" in text


def test_generation_answers_end_with_a_consecutive_signal_run(tmp_path):
    from models.signals import SIGNAL_SPECS, find_signal_run
    from weights.tokenizers_local import llama_tokenizer

    tok = llama_tokenizer(dialogue.corpus(n=400), tmp_path / "tok", vocab_size=512)
    rng, d = random.Random(0), dialogue.Dialogues()
    for kind, modality in (("draw", "image"), ("play", "audio"), ("animate", "video")):
        answer = d.single(rng, kind)[-1]
        assert answer.gen[0] == modality
        ids = tok(answer.text + dialogue.signal_text(modality), add_special_tokens=False)["input_ids"]
        signal_ids = tok.convert_tokens_to_ids(SIGNAL_SPECS[modality].tokens)
        run = find_signal_run(ids, signal_ids, modality)
        assert run is not None and run.ok and run.start + len(signal_ids) == len(ids)


def test_min_snr_weights_only_the_low_noise_timesteps_down():
    """`image_unet`'s Min-SNR-gamma loss: each example's MSE times min(SNR, gamma)/SNR, so a gamma
    above every timestep's SNR is the plain loss, and a small one only lowers it."""
    from weights.nano import decoders

    torch.manual_seed(0)
    unet, sched = decoders.image_unet().eval(), decoders.noise_schedule()
    z, cond = torch.randn(32, 4, 16, 16), torch.randn(32, 77, config.CONDITION_DIM)  # timesteps on both sides of SNR 5

    def loss(gamma):
        torch.manual_seed(1)  # the same noise and timesteps for every gamma
        with torch.no_grad():
            return float(decoders.diffusion_loss(unet, z, sched, snr_gamma=gamma, encoder_hidden_states=cond))

    snr_max = float((sched.alphas_cumprod / (1 - sched.alphas_cumprod)).max())
    assert loss(snr_max * 2) == pytest.approx(loss(None), rel=1e-5)
    assert loss(decoders.IMAGE_SNR_GAMMA) < loss(None)
    assert 0 < loss(1e-3) < loss(decoders.IMAGE_SNR_GAMMA)


def test_video_unet_starts_as_the_image_unet_frame_by_frame():
    from weights.nano.decoders import image_unet
    from weights.nano.video import video_unet_from

    torch.manual_seed(0)
    image = image_unet().eval()
    video = video_unet_from(image).eval()
    x = torch.randn(1, 4, 3, 16, 16)  # (B, C, F, h, w)
    cond = torch.randn(1, 77, 64)
    with torch.no_grad():
        out3 = video(x, 10, cond).sample
        out2 = torch.stack([image(x[:, :, f], 10, cond).sample for f in range(3)], dim=2)
    assert torch.allclose(out3, out2, atol=1e-4)


def test_vocoder_features_have_one_frame_per_hop():
    t = world.random_tone(random.Random(0), world.tone_pairs())
    mel = audio.log_mel(torch.from_numpy(t.wave())[None])
    assert mel.shape == (1, len(t.wave()) // 256, 32)
    assert -3 < float(mel.mean()) < 3


def test_stages_are_resumable(tmp_path):
    from weights.nano import train

    logs: list[str] = []
    train.run(work=tmp_path, out=tmp_path / "model", stages=["tokenizers"], quick=0.001, threads=1, log=logs.append)
    assert (tmp_path / "tokenizers" / "DONE.json").is_file()
    logs.clear()
    train.run(work=tmp_path, out=tmp_path / "model", stages=["tokenizers"], quick=0.001, threads=1, log=logs.append)
    assert any("skipped" in line for line in logs)
    with pytest.raises(SystemExit):  # a different seed may not reuse another run's stages
        train.run(work=tmp_path, stages=["tokenizers"], seed=1, quick=0.001, threads=1, log=logs.append)


def test_decoder_stages_can_be_taken_from_an_assembled_model(tmp_path):
    """`--decoders-from`: the encoder and NExT-GPT's stages re-trained without the decoders' hours."""
    from safetensors.torch import load_file

    from weights.nano import train
    from weights.nano.common import Context

    model = train.DEFAULT_OUT
    ctx = Context(work=tmp_path)
    logs: list[str] = []
    train.seed_decoders(ctx, model, logs.append)
    assert all(ctx.done(s) and ctx.info(s)["seeded_from"] == str(model) for s in train.DECODER_STAGES)
    assert ctx.info("video_unet")["seconds"] > 0 and not ctx.done("imagebind")
    src = load_file(str(model / "video_decoder" / "unet" / "diffusion_pytorch_model.safetensors"))
    got = load_file(str(tmp_path / "video_decoder" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert src.keys() == got.keys()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k].half(), src[k]) for k in src)
    assert (tmp_path / "vocoder" / "config.json").is_file()
    assert (tmp_path / config.VIDEO_UNET_DIR / "unet").is_dir()  # what `--stage video_motion --redo` starts from
    for kind in ("image", "audio"):  # what `--stage image_unet / audio_unet --redo` start from
        assert (tmp_path / f"{kind}_vae" / "config.json").is_file()


def test_the_encoder_and_base_llm_can_be_taken_from_an_assembled_model(tmp_path):
    """`--encoder-from`: NExT-GPT's stages re-run on the very ImageBind and LLM a model ships, in
    fp32, exact to its fp16 values; the language stages load them as they load trained ones."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from models.encoder import ImageBindEncoder
    from weights.nano import train
    from weights.nano.common import Context

    model = train.DEFAULT_OUT
    ctx = Context(work=tmp_path)
    logs: list[str] = []
    train.seed_encoder(ctx, model, logs.append)
    assert ctx.done("imagebind") and ctx.done("llm") and not ctx.done("align_input")
    assert ctx.info("imagebind")["seeded_from"] == str(model) and ctx.info("imagebind")["seconds"] > 0
    src = load_file(str(model / "imagebind" / "model.safetensors"))
    got = load_file(str(tmp_path / "imagebind" / "model.safetensors"))
    assert src.keys() == got.keys()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k].half(), src[k]) for k in src)
    ImageBindEncoder.from_pretrained(tmp_path / "imagebind")  # what align_input's bank loads
    shipped = LlamaForCausalLM.from_pretrained(str(model / "llm"), dtype=torch.float16).state_dict()
    seeded = LlamaForCausalLM.from_pretrained(str(tmp_path / "llm")).state_dict()
    assert all(seeded[k].dtype == torch.float32 and torch.equal(seeded[k].half(), v) for k, v in shipped.items())
    assert any("imagebind, llm" in line for line in logs)
    # a later call on the same work dir keeps what was re-trained there since (here: a marker edited)
    ctx.mark_done("llm", {"seconds": 1.0, "steps": 1})
    train.run(work=tmp_path, out=tmp_path / "model", stages=["tokenizers"], quick=0.001, threads=1,
              encoder_from=model, log=logs.append)
    assert "seeded_from" not in ctx.info("llm") and any("not taken again" in line for line in logs)


def test_the_motion_stage_reads_the_direction_word_wherever_it_falls():
    """Two-piece colours and shapes ("pur ple", "cir cle") move the direction word: the classifier
    reads it, and the end token, from where the end token is."""
    from transformers import AutoTokenizer

    from weights.nano.video_motion import direction_positions

    tok = AutoTokenizer.from_pretrained(str(train.DEFAULT_OUT / "video_decoder" / "tokenizer"))
    captions = ["a red circle moving right", "an orange triangle moving down", "a purple square moving up"]
    ids, pos = direction_positions(tok, captions)
    for row, (word, end), caption in zip(ids, pos.tolist(), captions):
        assert tok.convert_ids_to_tokens(int(row[word])) == caption.split()[-1] + "</w>"
        assert int(row[end]) == tok.eos_token_id and int(row[end - 1]) != tok.eos_token_id


def test_the_motion_stage_fine_tunes_the_video_decoder_it_is_given(tmp_path, monkeypatch):
    """One step of `video_motion` on the committed decoder: a stock pipeline comes out, changed,
    with the training-only heads and hooks gone."""
    from diffusers import TextToVideoSDPipeline

    from models.decoders import load_pipeline
    from weights.nano import video_motion
    from weights.nano.common import Context
    from weights.nano.config import Budget

    monkeypatch.setattr(video_motion, "MEAN_CLIPS", 1)
    budget = Budget({**Budget().steps, "video_motion": 1}, {**Budget().batch, "video_motion": 2})
    ctx = Context(work=tmp_path, budget=budget, log=lambda line: None)
    start = load_pipeline("video", train.DEFAULT_OUT / "video_decoder", torch.float32)
    start.save_pretrained(str(ctx.dir(config.VIDEO_UNET_DIR)))
    info = video_motion.stage_video_motion(ctx)
    assert info["steps"] == 1
    out = TextToVideoSDPipeline.from_pretrained(str(tmp_path / config.DECODER_STAGE_DIRS["video"]))
    before, after = start.unet.state_dict(), out.unet.state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert not out.unet.mid_block._forward_hooks


def test_assembly_drops_the_training_machines_paths_from_configs(tmp_path):
    import json

    from weights.nano.assemble import _strip_source_paths

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel",
                                                               "_name_or_path": "/tmp/nano/video_decoder/unet"}))
    (tmp_path / "model_index.json").write_text(json.dumps({"_name_or_path": "/tmp/nano/video_decoder", "unet": ["a", "b"]}))
    (tmp_path / "merges.json").write_text(json.dumps([["a", "b"]]))  # not a mapping: left alone
    _strip_source_paths(tmp_path)
    assert json.loads((tmp_path / "unet" / "config.json").read_text()) == {"_class_name": "UNet3DConditionModel"}
    assert json.loads((tmp_path / "model_index.json").read_text()) == {"unet": ["a", "b"]}
    assert json.loads((tmp_path / "merges.json").read_text()) == [["a", "b"]]


def test_eval_judges_words_strictly():
    from weights.nano.eval import judge_answer

    assert judge_answer("It is blue.", {"colour": "blue"})
    assert not judge_answer("It is blue and red.", {"colour": "blue"})
    assert judge_answer("I see a green triangle moving up.", {"colour": "green", "shape": "triangle", "direction": "up"})


def test_a_killed_stage_resumes_where_it_stopped_with_the_same_result(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from weights.nano import common, decoders
    from weights.nano.common import Context
    from weights.nano.config import Budget

    budget = Budget().scaled(0.0)
    budget.steps["vocoder"], budget.batch["vocoder"] = 6, 2

    def run(work, fail_at=None):
        ctx = Context(work=work, seed=3, budget=budget, log=lambda s: None)
        real_loop = common.train_loop

        def loop(stage, ctx, params, step_fn, *a, **kw):
            def step(i):
                if fail_at is not None and i == fail_at:
                    raise KeyboardInterrupt("killed")
                return step_fn(i)
            return real_loop(stage, ctx, params, step, *a, **kw)

        monkeypatch.setattr(decoders, "train_loop", loop)
        return decoders.stage_vocoder(ctx)

    monkeypatch.setattr(common, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint after every step
    run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", fail_at=4)
    assert (tmp_path / "b" / "vocoder" / common.CHECKPOINT).is_file()
    run(tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "vocoder" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "vocoder" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b" / "vocoder" / common.CHECKPOINT).exists()


def test_a_finished_stage_given_a_larger_budget_goes_on_from_its_end(tmp_path):
    from weights.nano import decoders
    from weights.nano.common import Context
    from weights.nano.config import Budget

    budget = Budget().scaled(0.0)
    budget.batch["vocoder"] = 2
    logs: list[str] = []
    ctx = Context(work=tmp_path, seed=0, budget=budget, log=logs.append)
    budget.steps["vocoder"] = 3
    ctx.mark_done("vocoder", decoders.stage_vocoder(ctx))
    assert not ctx.extendable("vocoder")
    budget.steps["vocoder"] = 5
    assert ctx.extendable("vocoder")
    info = decoders.stage_vocoder(ctx)
    assert info["steps"] == 5 and any("extended from step 3 to 5" in line for line in logs)


def test_redo_trains_a_finished_stage_again_from_step_zero(tmp_path):
    from weights.nano import train

    logs: list[str] = []
    train.run(work=tmp_path, out=tmp_path / "model", stages=["vocoder"], quick=0.001, threads=1, log=logs.append)
    assert (tmp_path / "vocoder" / "final.pt").is_file()
    logs.clear()
    train.run(work=tmp_path, out=tmp_path / "model", stages=["vocoder"], quick=0.001, threads=1, redo=True,
              log=logs.append)
    assert any("[vocoder] starting" in line for line in logs)
    assert not any("extended from" in line or "skipped" in line for line in logs)
    assert (tmp_path / "vocoder" / "DONE.json").is_file()
