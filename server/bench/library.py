"""Bench scenarios on the model library: our warm pipeline against the stock way, same work."""
from __future__ import annotations

import time
from pathlib import Path

from models.generate import SamplingParams
from models.nextgpt import NextGPT
from models.types import MediaItem, Message

from ..codecs import encode_output
from . import media_samples
from .stock import stock_chat
from .timing import Comparison, median_seconds

SAMPLING = SamplingParams(max_new_tokens=32, temperature=0.0, seed=0)


def _item(kind: str) -> MediaItem:
    data = {"image": media_samples.png, "audio": media_samples.wav, "video": media_samples.mp4}[kind]()
    return MediaItem.from_bytes(data, kind)


def _ours(model: NextGPT, messages, required=()) -> dict[str, float]:
    t0 = time.perf_counter()
    out = model.chat(messages, required=required, sampling=SAMPLING)
    stages = dict(out.timings)
    stages["total"] = time.perf_counter() - t0
    if out.usage.completion_tokens and stages.get("llm"):
        stages["tokens_per_s"] = out.usage.completion_tokens / stages["llm"]
    for modality, value in out.media.items():
        t1 = time.perf_counter()
        encode_output(modality, value)
        stages[f"encode_{modality}_output"] = time.perf_counter() - t1
    return stages


def single_turn_sides(model: NextGPT, model_dir: Path, inputs=(), required=()):
    """(ours, stock) for one turn, media (if any) new to the encoder each time, as for a fresh request."""
    items = [_item(k) for k in inputs]
    messages = [Message("user", "Describe this and make what I ask.", items)]

    def ours():
        model.encoder.cache.clear()
        return _ours(model, messages, required)

    def stock():
        return stock_chat(model_dir, model, messages, SAMPLING.max_new_tokens, required)
    return ours, stock


def single_turn(model: NextGPT, model_dir: Path, name: str, inputs=(), required=(), repeat=3) -> Comparison:
    ours, stock = single_turn_sides(model, model_dir, inputs, required)
    stages = ours()  # warm, and the per-stage breakdown
    ours_s = median_seconds(ours, repeat)
    stock_s = median_seconds(stock, repeat)
    what = "HF generate with all hidden states + attentions" + (", pipelines loaded per call" if required else "")
    return Comparison(name, ours_s, stock_s, what, stages=stages)


def three_turn_sides(model: NextGPT, model_dir: Path):
    """(ours, stock) for a conversation: image in; audio in + image out; video in + audio out,
    history kept."""
    plan = [("Describe this picture.", ["image"], []), ("Now listen and draw it.", ["audio"], ["image"]),
            ("And this clip? Play a sound for it.", ["video"], ["audio"])]
    items = {k: _item(k) for k in ("image", "audio", "video")}

    def conversation(turn_fn):
        history: list[Message] = []
        for text, kinds, required in plan:
            history.append(Message("user", text, [items[k] for k in kinds]))
            answer = turn_fn(history, required)
            history.append(Message("assistant", answer))

    def ours_turn(history, required):
        return model.chat(history, required=required, sampling=SAMPLING).text

    def stock_turn(history, required):
        stock_chat(model_dir, model, history, SAMPLING.max_new_tokens, required)
        return "ok"

    def ours():
        model.encoder.cache.clear()  # a new conversation: its media are new to the encoder
        conversation(ours_turn)

    return ours, lambda: conversation(stock_turn)


def three_turns(model: NextGPT, model_dir: Path, repeat=2) -> Comparison:
    ours, stock = three_turn_sides(model, model_dir)
    return Comparison("three-turn conversation with media", median_seconds(ours, repeat), median_seconds(stock, repeat),
                      "media re-encoded every turn, pipelines loaded per call, HF generate with all states",
                      target=3.0)
