"""The stock way, as the reference implementation does the same work, for `nextgpt bench`.

HF `generate` keeping every layer's hidden states and attentions of every step; each diffusers
pipeline loaded from disk on every call (which also re-encodes the negative prompt); every
history media item re-encoded by ImageBind on every turn; one request at a time.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from models.decoders import load_pipeline
from models.nextgpt import NextGPT
from models.prompt import Turn, build_segments, splice_embeddings
from models.signals import MODALITIES, find_signal_run
from models.types import Message


def stock_turns(model: NextGPT, messages: list[Message]) -> list[Turn]:
    turns = []
    for msg in messages:
        media: dict[str, list[torch.Tensor]] = {}
        for item in msg.media:  # key=None: no cache, as the reference re-encodes every turn
            emb = model.encoder.encode(item.modality, item.value, key=None)
            media.setdefault(item.modality, []).append(model.llm.project_media(emb))
        turns.append(Turn(msg.role, msg.text, media))
    return turns


@torch.inference_mode()
def stock_language(model: NextGPT, messages: list[Message], max_new_tokens: int, required=()):
    llm = model.llm
    embeds, _ = splice_embeddings(build_segments(stock_turns(model, messages)), llm.tokenize, llm.embed_ids,
                                  llm.tokenizer.bos_token_id, model.config.bos_per_text_segment)
    out = llm.llama_model.generate(
        inputs_embeds=embeds, max_new_tokens=max_new_tokens, do_sample=False,
        output_hidden_states=True, output_attentions=True, return_dict_in_generate=True,
        eos_token_id=sorted(llm.stop_ids), pad_token_id=llm.tokenizer.eos_token_id)
    ids = out.sequences[0].tolist()
    # step 0's states cover the prompt; step i >= 1 holds the state of generated id i-1
    steps = [layers[-1][0, -1] for layers in out.hidden_states[1:]]
    conditions = {}
    for modality in MODALITIES:
        signal = llm.signal_ids[modality]
        run = find_signal_run(ids, signal, modality)
        if run is not None and run.ok and run.start + len(signal) <= len(steps):
            hidden = torch.stack(steps[run.start:run.start + len(signal)])
            conditions[modality] = model._project(modality, hidden, signal)
        elif modality in required:  # the appended-signal path, without a cache: a full forward
            full = torch.cat([embeds, llm.embed_ids(torch.tensor([ids + signal]))], dim=1)
            hidden = llm.lm.model(inputs_embeds=full).last_hidden_state[0, -len(signal):]
            conditions[modality] = model._project(modality, hidden, signal)
    return llm.decode_text(ids), conditions


@torch.inference_mode()
def stock_decode(model_dir: Path, model: NextGPT, modality: str, condition: torch.Tensor, params, seed: int):
    """Load the pipeline from disk, as the reference does on every request, then draw."""
    part = getattr(model.config.components, modality)
    # at the dtype the model runs at (the files may be fp16, as nano's are)
    pipe = load_pipeline(modality, model_dir / part, condition.dtype)
    pipe.set_progress_bar_config(disable=True)
    common = dict(prompt_embeds=condition, num_inference_steps=params.num_inference_steps,
                  guidance_scale=params.guidance_scale, generator=torch.Generator().manual_seed(seed))
    if modality == "image":
        return pipe(height=params.height, width=params.width, **common).images[0]
    if modality == "audio":
        return pipe(audio_length_in_s=params.audio_length_in_s, **common).audios[0]
    return pipe(num_frames=params.num_frames, height=params.height, width=params.width,
                output_type="np", **common).frames[0]


def stock_chat(model_dir: Path, model: NextGPT, messages: list[Message], max_new_tokens: int,
               required=(), seed: int = 0) -> dict[str, float]:
    """One turn the stock way; returns per-stage seconds."""
    timings = {}
    t0 = time.perf_counter()
    _, conditions = stock_language(model, messages, max_new_tokens, required)
    timings["llm"] = time.perf_counter() - t0
    for modality, condition in conditions.items():
        t0 = time.perf_counter()
        stock_decode(model_dir, model, modality, condition, model.decoder_params(modality), seed)
        timings[modality] = time.perf_counter() - t0
    return timings
