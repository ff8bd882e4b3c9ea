"""The decoders' text conditioning: the audio decoder's attribute code, the `audio_unet` step and
stage that hold its CLAP text encoder to it, and the additive margins `diagnose_projection` reports."""
from __future__ import annotations

import math
import random

import torch

from weights.nano import config, train, world


def test_additive_margins_find_targets_that_compose_from_their_words():
    from weights.nano.diagnose_projection import additive_margins, captions

    names = [n for _, n in captions("image")]
    held = [(n["colour"], n["shape"]) in world.HELD_OUT_SHAPES for n in names]
    g = torch.Generator().manual_seed(0)
    vectors = {v: torch.randn(4, 8, generator=g) for n in names for v in n.values()}
    composed = torch.stack([sum(vectors[v] for v in n.values()) for n in names])  # (C, 4, 8)
    margins = additive_margins(composed, names, held)
    assert all(m == math.inf for m, h in zip(margins, held) if h), margins  # predicted exactly
    k = held.index(True)
    others = [i for i in range(len(names)) if i != k]
    nearest = min(others, key=lambda i: float((composed[i] - composed[k]).pow(2).mean()))
    moved = composed.clone()
    moved[k] = composed[k] + 2 * (composed[k] - composed[nearest])  # a target far off what its words compose
    assert additive_margins(moved, names, held)[k] < 0


def test_the_attribute_code_makes_a_captions_target_the_sum_of_its_attributes():
    from weights.nano.decoders import ATTRIBUTE_CODE, PITCH_CODE_WEIGHT, code_target

    assert list(ATTRIBUTE_CODE) == [*world.PITCHES, *world.TIMBRES, *world.REGISTERS]
    k = len(world.PITCHES) + len(world.TIMBRES) + len(world.REGISTERS)
    basis = torch.stack(list(ATTRIBUTE_CODE.values()))  # (k, D)
    assert basis.shape == (k, config.CONDITION_DIM)
    torch.testing.assert_close(basis @ basis.T, torch.eye(k), atol=1e-5, rtol=0)  # orthonormal
    both, low, beeping = code_target({"low", "beeping"}), code_target({"low"}), code_target({"beeping"})
    w = PITCH_CODE_WEIGHT  # a pitch's direction weighs w against a timbre's 1
    torch.testing.assert_close(both, (w * low + beeping) / (w ** 2 + 1) ** 0.5)
    assert abs(float(both @ code_target({"low", "buzzy"})) - w ** 2 / (w ** 2 + 1)) < 1e-5  # pitch shared
    assert abs(float(both @ code_target({"high", "beeping"})) - 1 / (w ** 2 + 1)) < 1e-5  # timbre shared
    assert float(both @ low) > float(both @ beeping)  # nearer its pitch
    assert abs(float(both @ code_target({"high", "pure"}))) < 1e-5  # none shared


def test_the_audio_unet_step_holds_the_clap_text_encoder_to_the_attribute_code():
    """`audio_unet`'s loss terms on fresh modules: finite; `code` trains the CLAP text encoder,
    never the UNet."""
    from transformers import AutoTokenizer

    from weights import tiny_decoders
    from weights.nano import decoders

    tok = AutoTokenizer.from_pretrained(str(train.DEFAULT_OUT / "audio_decoder" / "tokenizer"))
    torch.manual_seed(0)
    vae = tiny_decoders.vae(1, config.AUDIO_VAE_BLOCKS).requires_grad_(False)
    text = tiny_decoders.clap_text(len(tok), config.CONDITION_DIM, **config.CLAP_TEXT).train()
    unet = decoders.audio_unet().train()
    out = decoders.audio_unet_losses(tok, vae, text, unet, decoders.noise_schedule(), random.Random(0), 6)
    assert set(out) == {"loss", "diffusion", "code", "empty_apart"}
    assert all(bool(torch.isfinite(v)) for v in out.values()), out

    def reach(*tensors):
        grads = torch.autograd.grad(out["code"], tensors, allow_unused=True, retain_graph=True)
        return sum(float(g.norm()) for g in grads if g is not None)

    assert reach(*text.parameters()) > 0
    assert reach(*unet.parameters()) == 0


def test_the_audio_unet_stage_saves_a_stock_pipeline(tmp_path):
    """One step of `audio_unet` on the committed VAE, vocoder and tokenizer: a stock AudioLDMPipeline
    with the shipped decoder's modules."""
    from diffusers import AudioLDMPipeline

    from models.decoders import load_pipeline
    from weights.nano import common, decoders
    from weights.nano.config import Budget

    budget = Budget({**Budget().steps, "audio_unet": 1}, {**Budget().batch, "audio_unet": 2})
    ctx = common.Context(work=tmp_path, budget=budget, log=lambda line: None)
    start = load_pipeline("audio", train.DEFAULT_OUT / "audio_decoder", torch.float32)
    start.vae.save_pretrained(str(ctx.dir("audio_vae")))
    start.vocoder.save_pretrained(str(ctx.dir("vocoder")))
    start.tokenizer.save_pretrained(str(ctx.dir("tokenizers") / "clap"))
    assert decoders.stage_audio_unet(ctx)["steps"] == 1
    state = torch.load(tmp_path / "audio_unet" / common.FINAL, weights_only=False)
    assert set(state["modules"]) == {"unet", "text"} and len(state["ema"]) == 2
    out = AudioLDMPipeline.from_pretrained(str(tmp_path / config.DECODER_STAGE_DIRS["audio"]))
    assert out.text_encoder.state_dict().keys() == start.text_encoder.state_dict().keys()
    assert out.unet.state_dict().keys() == start.unet.state_dict().keys()
