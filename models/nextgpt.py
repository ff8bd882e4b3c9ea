"""NExT-GPT as a library: `NextGPT.from_pretrained(dir).chat(messages)` -> text + media.

Stages, each a component with its own device and dtype: the ImageBind encoder, the language
model (LoRA Vicuna + input projection + the three output projections), and one decoder per
output modality. `language()` and `decode()` are the two halves a scheduler may run apart.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .acceleration import for_modality
from .batching import BatchingDecoder
from .solo_decode import SoloSpec
from .config import ModelConfig
from .decoders import Decoder, DecoderLimits, ParameterError, merge_params, validate_params
from .encoder import ImageBindEncoder
from .generate import SamplingParams, feed_tokens, generate
from .llm import LanguageModel
from .llm_batching import BatchingGenerator
from .loading import STAGES, build_projections, default_dtype, load_parts, quiet_loading  # noqa: F401 (re-exported)
from .placement import Placement
from .prompt import Turn, build_segments, splice_embeddings
from .signals import MODALITIES, find_signal_run
from .streaming import TextStream
from .types import ChatResult, GeneratedVideo, LanguageOutput, Message, Usage


class NextGPT:
    def __init__(self, config: ModelConfig, encoder: ImageBindEncoder, llm: LanguageModel,
                 projections: nn.ModuleDict, decoders: dict[str, Decoder],
                 limits: DecoderLimits = DecoderLimits(), placement: Placement | None = None,
                 decoder_names: Iterable[str] | None = None):
        self.config = config
        self.encoder = encoder  # None (like llm) in a process that serves other stages only
        self.llm = llm
        self.projections = projections.to(llm.device, llm.dtype).eval() if llm is not None else projections
        self.decoders = decoders
        # the outputs the server can draw: its own decoders, or (LLM alone in a process) the
        # decoders that other processes serve
        self.decoder_names = set(decoders if decoder_names is None else decoder_names)
        self.limits = limits
        self.batchers: dict[str, BatchingDecoder] = {}
        self.llm_batcher: BatchingGenerator | None = None
        self.placement = placement
        self.device_locks = self._share_offload_slots(placement)

    def _share_offload_slots(self, placement: Placement | None) -> dict[str, threading.Lock]:
        """One lock per GPU whose offloaded decoders share one slot (Placement.planned_bytes): each
        such decoder holds its GPU's lock around its pipeline call, batched or not, so two of them
        never load onto that GPU at once. Resident decoders take no lock."""
        groups = placement.exclusive_groups() if placement is not None else {}
        locks = {device: threading.Lock() for device in groups}
        for device, stages in groups.items():
            for stage in stages:
                if stage in self.decoders:
                    self.decoders[stage].lock = locks[device]
        return locks

    def accelerate_decoders(self, where: str = "auto", compile_mode: str | None = None) -> list[str]:
        """Speed up the decoders' pipelines (models/acceleration.py): those on a GPU ("auto"),
        every one ("all": also on the CPU, where it pays little) or none ("off"). Returns the
        modalities sped up; an offloaded decoder is left stock."""
        done = []
        for modality, decoder in self.decoders.items():
            if where == "off" or (where == "auto" and decoder.device.type != "cuda"):
                continue
            if decoder.accelerate(for_modality(modality, compile_mode)):
                done.append(modality)
        return done

    def enable_batching(self, max_batch: int = 8) -> None:
        """Concurrent decode() calls with equal parameters then share one pipeline call."""
        for modality, decoder in self.decoders.items():
            if modality not in self.batchers:
                self.batchers[modality] = BatchingDecoder(decoder, max_batch)

    def merge_lora(self) -> bool:
        """Serve the LLM with its LoRA folded into the base weights (LanguageModel.merge_lora)."""
        return self.llm is not None and self.llm.merge_lora()

    def enable_llm_batching(self, max_batch: int = 8, static: str = "auto",
                            compile_backend: str | None = SoloSpec.compile_backend,
                            compile_mode: str | None = SoloSpec.compile_mode) -> None:
        """Concurrent language() calls then generate their tokens together, one forward pass per
        token for all of them (continuous batching: each joins and leaves the batch on its own).
        `static`: a lone request decodes over a static KV cache with a compiled step
        (models/solo_decode.py): "auto" when the LLM is on a GPU, "on", or "off"."""
        if self.llm is None or self.llm_batcher is not None:
            return
        lm = self.llm.lm
        solo = None
        # bitsandbytes' layers are not compiled: a quantized LLM (a small GPU) stays eager
        if static == "on" or (static == "auto" and lm.device.type == "cuda" and not self.llm.quantized):
            solo = SoloSpec(lm.config.max_position_embeddings, compile_backend, compile_mode)
        elif max_batch == 1:
            return  # nothing to batch and no fast path: generate() serves each call
        self.llm_batcher = BatchingGenerator(lm, max_batch, solo=solo)

    def close(self) -> None:
        """End the batching workers (their threads must not outlive the model at exit)."""
        for batcher in self.batchers.values():
            batcher.close()
        self.batchers.clear()
        if self.llm_batcher is not None:
            self.llm_batcher.close()
            self.llm_batcher = None

    @classmethod
    def from_pretrained(cls, path: str | Path, devices: dict[str, str] | str = "cpu",
                        limits: DecoderLimits = DecoderLimits(), placement: Placement | None = None,
                        stages: tuple[str, ...] = STAGES, decoder_names: Iterable[str] | None = None) -> "NextGPT":
        """Load a model directory; `devices` maps a stage (see STAGES) to its device.
        `placement` (models/placement.py) overrides `devices` and adds the LLM's quantization and
        the decoders' CPU offload. `stages` loads only some stages (a process serving one stage);
        `decoder_names` then says which outputs the decoders elsewhere can draw."""
        p = load_parts(path, devices, placement, stages)
        return cls(p.config, p.encoder, p.llm, p.projections, p.decoders, limits, placement, decoder_names)

    # 1. encode and project media -------------------------------------------------------------
    def _turns(self, messages: list[Message]) -> tuple[list[Turn], int]:
        turns, n_media = [], 0
        for msg in messages:
            media: dict[str, list[torch.Tensor]] = {}
            for item in msg.media:
                emb = item.embedding  # already encoded by an encoder in another process, or:
                if emb is None:
                    emb = self.encoder.encode(item.modality, item.value, item.key)  # (D,)
                media.setdefault(item.modality, []).append(self.llm.project_media(emb))  # (H,)
                n_media += 1
            turns.append(Turn(msg.role, msg.text, media))
        return turns, n_media

    # 2.-4. prompt, generation, signal hidden states -> decoder conditions -----------------------
    @torch.inference_mode()
    def language(self, messages: list[Message], *, modalities: Iterable[str] = MODALITIES,
                 required: Iterable[str] = (), sampling: SamplingParams = SamplingParams(),
                 on_text: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> LanguageOutput:
        allowed, required = set(modalities), set(required)
        check_messages(messages, allowed, required)
        missing = required - self.decoder_names
        if missing:
            raise ValueError(f"this model has no decoder for {sorted(missing)}")
        timings = {}
        t0 = time.perf_counter()
        turns, n_media = self._turns(messages)
        timings["encode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        segments = build_segments(turns)
        embeds, _ = splice_embeddings(segments, self.llm.tokenize, self.llm.embed_ids,
                                      self.llm.tokenizer.bos_token_id, self.config.bos_per_text_segment)
        stream = TextStream(self.llm.decode_text, on_text)
        gen, cache = self._generate(embeds, sampling, stream.push, should_stop)
        timings["llm"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        conditions, skipped = self._conditions(gen, cache, allowed, required)
        timings["projection"] = time.perf_counter() - t0
        usage = Usage(prompt_tokens=embeds.shape[1], completion_tokens=len(gen.ids), media_items=n_media)
        return LanguageOutput(stream.final_text(gen.ids), gen.ids, gen.finish_reason, conditions, skipped, usage, timings)

    def _generate(self, embeds: torch.Tensor, sampling: SamplingParams, on_token, should_stop):
        if self.llm_batcher is not None:  # with whatever other requests are generating now
            return self.llm_batcher(embeds, sampling, self.llm.stop_ids, on_token, should_stop)
        return generate(self.llm.lm, embeds, sampling, self.llm.stop_ids, on_token, should_stop)

    def _conditions(self, gen, cache, allowed: set[str], required: set[str]):
        """Hidden states at each signal run (emitted, or appended when required) -> projections."""
        conditions, skipped = {}, {}
        for modality in MODALITIES:
            ids = self.llm.signal_ids[modality]
            run = find_signal_run(gen.ids, ids, modality)
            hidden = None
            if run is not None and modality not in self.decoder_names:
                skipped[modality] = f"the model asked for {modality} but this server has no {modality} decoder"
            elif run is not None and not run.ok:
                skipped[modality] = run.reason
            elif run is not None and modality in allowed:
                hidden = self._hidden_at(gen, cache, run.start, len(ids))
            elif run is not None:
                skipped[modality] = f"the model produced {modality} but it is not in the accepted modalities"
            if hidden is None and modality in required:
                self._hidden_at(gen, cache, len(gen.ids), 0)  # make sure every generated id is cached
                hidden = feed_tokens(self.llm.lm, ids, cache)  # (N, H)
                skipped.pop(modality, None)
            if hidden is not None:
                conditions[modality] = self._project(modality, hidden, ids)
        return conditions, skipped

    def _hidden_at(self, gen, cache, start: int, n: int) -> torch.Tensor:
        """Last-layer states AT positions start..start+n-1 of the generated ids (N, H)."""
        if len(gen.hidden) < len(gen.ids) and start + n >= len(gen.ids):
            gen.hidden.append(feed_tokens(self.llm.lm, [gen.ids[-1]], cache)[0])  # last id was never fed
        return torch.stack(gen.hidden[start:start + n]) if n else torch.empty(0)

    def _project(self, modality: str, hidden: torch.Tensor, ids: list[int]) -> torch.Tensor:
        signal_embeds = self.llm.embed_ids(torch.tensor([ids]))  # (1, N, H)
        out = self.projections[modality](hidden.unsqueeze(0), signal_embeds)  # (1, Q, D)
        return out.reshape(1, -1) if modality == "audio" else out  # AudioLDM takes (1, D)

    # 5. decode ---------------------------------------------------------------------------------
    def decoder_params(self, modality: str, overrides: dict | None = None):
        return checked_decoder_params(self.decoders, self.limits, modality, overrides)

    def decode(self, modality: str, condition: torch.Tensor, params, seed: int | None = None,
               on_step: Callable[[int, int], None] | None = None,
               should_stop: Callable[[], bool] | None = None):
        if modality in self.batchers:
            out = self.batchers[modality](condition, params, seed, on_step, should_stop)
        else:
            out = self.decoders[modality](condition, params, [seed], on_step, should_stop)[0]
        return GeneratedVideo(out, params.fps) if modality == "video" else out

    # the whole turn ----------------------------------------------------------------------------
    def chat(self, messages: list[Message], *, modalities: Iterable[str] = MODALITIES,
             required: Iterable[str] = (), sampling: SamplingParams = SamplingParams(),
             decoder_params: dict[str, dict] | None = None,
             on_text: Callable[[str], None] | None = None,
             on_progress: Callable[[str, int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> ChatResult:
        # 1. check the decoder parameters before any work is spent
        params = {m: self.decoder_params(m, (decoder_params or {}).get(m)) for m in self.decoders}
        # 2. encode, prompt, generate, project
        lang = self.language(messages, modalities=modalities, required=required, sampling=sampling,
                             on_text=on_text, should_stop=should_stop)
        result = ChatResult(text=lang.text, skipped=dict(lang.skipped), finish_reason=lang.finish_reason,
                            usage=lang.usage, timings=dict(lang.timings))
        # 3. decode each requested output
        for modality, condition in lang.conditions.items():
            t0 = time.perf_counter()
            step = (lambda s, t, m=modality: on_progress(m, s, t)) if on_progress else None
            output = self.decode(modality, condition, params[modality], sampling.seed, step, should_stop)
            setattr(result, modality, output)
            result.timings[modality] = time.perf_counter() - t0
        return result


def checked_decoder_params(decoders: dict, limits: DecoderLimits, modality: str, overrides: dict | None = None):
    """A request's parameters for one decoder, merged with its defaults and checked against the
    limits; `decoders` maps a modality to anything with the decoder's `defaults` and
    `spatial_multiple` (a Decoder, or its description sent by another process)."""
    if modality not in decoders:
        raise ParameterError(modality, f"this model has no {modality} decoder")
    decoder = decoders[modality]
    params = merge_params(modality, decoder.defaults, overrides)
    return validate_params(modality, params, limits, decoder.spatial_multiple)


def check_messages(messages: list[Message], allowed: set[str], required: set[str]) -> None:
    if not messages:
        raise ValueError("messages must not be empty")
    for i, msg in enumerate(messages):
        if msg.role not in ("user", "assistant"):
            raise ValueError(f"messages[{i}].role must be 'user' or 'assistant', got {msg.role!r}")
    if messages[-1].role != "user":
        raise ValueError("the last message must come from the user")
    unknown = (allowed | required) - set(MODALITIES) - {"text"}
    if unknown:
        raise ValueError(f"unknown modalities: {sorted(unknown)}")
    if not required <= allowed:
        raise ValueError(f"required modalities {sorted(required - allowed)} are not in modalities")
