"""The media NExT-GPT's stages talk about: ImageBind embeddings of world media made once per
encoder (the bank), composed ones made from them, and the conversations that draw on both.

The language stages never decode media: each conversation's media reach the LLM as their
embeddings, so the bank embeds each sample once, through the server's own `ImageBindEncoder`
and preprocessing, and caches the result under the work directory for as long as the encoder
and the bank's recipe stay the same.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

from models.encoder import WEIGHTS_FILE, ImageBindEncoder
from models.media import VideoClip
from models.signals import MODALITIES

from . import dialogue, world
from .analogy import composed_samples
from .common import Context
from .config import Budget
from .dialogue import Conversation, Dialogues, Turn


@dataclass
class Bank:
    """ImageBind embeddings of world media, made by the server's own encoder from the trained towers."""

    items: dict[str, list] = field(default_factory=dict)  # modality -> samples
    embeds: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> (N, D)
    index: dict[str, dict] = field(default_factory=dict)  # modality -> sample -> row

    def embedding(self, modality: str, sample) -> torch.Tensor:
        return self.embeds[modality][self.index[modality][sample]]


BANK_SIZES = {"image": 1200, "video": 600, "audio": 800}
# What the cached bank was made by: a bank of another recipe is made again.
BANK_RECIPE = {"sizes": BANK_SIZES}


def _bank_samples(ctx: Context, rng: random.Random) -> dict[str, list]:
    pairs, tones = world.shape_pairs(), world.tone_pairs()
    scale = min(1.0, ctx.steps("instruct") / Budget().steps["instruct"])  # quick runs: a small bank
    sizes = {m: max(48, int(n * scale)) for m, n in BANK_SIZES.items()}
    return {"image": [world.random_shape(rng, pairs) for _ in range(sizes["image"])],
            "video": [world.random_video(rng, pairs) for _ in range(sizes["video"])],
            "audio": [world.random_tone(rng, tones, seconds=world.AUDIO_SECONDS if rng.random() < 0.6
                                        else rng.uniform(0.8, 3.0)) for _ in range(sizes["audio"])]}


def _load_samples(meta: dict) -> dict[str, list]:
    kinds = {"image": world.ShapeSample, "video": world.VideoSample, "audio": world.ToneSample}
    return {m: [kinds[m](**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}) for d in meta[m]]
            for m in kinds}


@torch.no_grad()
def build_bank(ctx: Context) -> Bank:
    path = ctx.dir("bank")
    rng = ctx.rng("bank")
    enc = ImageBindEncoder.from_pretrained(ctx.work / "imagebind")
    encoder_id = hashlib.sha256((ctx.work / "imagebind" / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    meta = json.loads((path / "bank.json").read_text()) if (path / "bank.json").is_file() else {}
    cached = meta.pop("encoder", None) == encoder_id and meta.pop("recipe", None) == BANK_RECIPE
    if cached and (path / "bank.safetensors").is_file():
        embeds, items = load_file(str(path / "bank.safetensors")), _load_samples(meta)
    else:
        items = _bank_samples(ctx, rng)
        values = {"image": [world.encoder_view(s, rng) for s in items["image"]],
                  "video": [VideoClip(v.frames(size=rng.choice((32, 64))), float(world.VIDEO_FPS)) for v in items["video"]],
                  "audio": [t.wave() for t in items["audio"]]}
        embeds = {}
        for m in MODALITIES:
            rows = []
            for start in range(0, len(values[m]), 16):
                x = torch.stack([enc.to_tensor(m, v) for v in values[m][start:start + 16]])
                tower = "audio" if m == "audio" else "vision"
                rows.append(enc.model({tower: x})[tower])
            embeds[m] = torch.cat(rows).contiguous()
        save_file(embeds, str(path / "bank.safetensors"))
        meta = {m: [s.__dict__ for s in items[m]] for m in items}
        (path / "bank.json").write_text(json.dumps({**meta, "encoder": encoder_id, "recipe": BANK_RECIPE}))
    index = {m: {s: k for k, s in enumerate(items[m])} for m in items}
    return Bank(items, embeds, index)


# Play requests naming a timbre alone, of all play requests in `align_output` and `instruct`
# (docs/nano-history.md, session 18: without them the projection landed high buzzy off its code).
TIMBRE_REQUESTS = 0.2

# The share of bank media, in conversations about media, that are composed ImageBind embeddings
# e_a + e_b - e_c of seen combinations, captioned as the seen combination d they compose to: the
# input projection and the LLM learn to read sums of embeddings, as a held-out combination's
# embedding nearly is (tones since session 21; images and videos since session 29, when an
# orange square's parallelogram of seen squares and oranges was read "red" 3 times in 8).
COMPOSED = {"image": 0.2, "video": 0.2, "audio": 0.2}
COMPOSED_PER_MODALITY = 400  # composed samples made once per stage, drawn from as the bank's are

# The share of single questions about a modality's media that `instruct` asks instead of a
# composed embedding at a corner of the lattice no bank sample has (the held-out pairs): e_a + e_b
# - e_c of three seen samples, answered as the corner's combination ("Describe this sound." "A low
# beeping tone."; "Is it high or low?" "It is a low tone."). It is the input side of the analogy
# term, and generative zero-shot learning's recipe: the unseen classes' features are synthesised
# from seen ones' and labelled with the unseen classes' attributes. No held-out media is made or
# embedded, and no held-out pair is ever requested (drawn, played, animated) or followed up on.
# Tones only: their held-out embeddings lie farthest from such sums (cosine 0.8-0.9; images
# 0.97-0.99) and their read is what draws of the language stages lose, while images and videos
# are read right on every draw since session 34. On session 35's chain from nothing, two draws of
# `instruct` each met every held-out target (3 misses each, against 10 and 9 without; asked about
# one attribute only, 3 and 5: docs/nano-history.md, session 36).
CORNERS = {"image": 0.0, "video": 0.0, "audio": 0.2}
CORNERS_PER_MODALITY = 200

QUESTION = {"image": dialogue.image_question, "video": dialogue.video_question, "audio": dialogue.audio_question}


@dataclass
class Composed:
    """The media the language stages draw on besides the bank's own, by modality."""

    seen: dict[str, list]  # composed samples of seen combinations
    corners: dict[str, list]  # composed samples of the lattice's unseen corners


def with_composed(bank: Bank) -> tuple[Bank, Composed]:
    """The bank with `COMPOSED_PER_MODALITY` composed samples of seen combinations and
    `CORNERS_PER_MODALITY` of unseen corners (where `CORNERS` asks about them) of each modality
    after its own, and those samples."""
    items, embeds, composed = {}, {}, Composed({}, {})
    for m in MODALITIES:
        composed.seen[m], seen_rows = composed_samples(m, bank.items[m], bank.embeds[m], COMPOSED_PER_MODALITY)
        corners = CORNERS_PER_MODALITY if CORNERS[m] else 0  # made only where asked about
        composed.corners[m], corner_rows = composed_samples(m, bank.items[m], bank.embeds[m], corners, unseen=True)
        items[m] = bank.items[m] + composed.seen[m] + composed.corners[m]
        embeds[m] = torch.cat([bank.embeds[m], seen_rows, corner_rows])
    index = {m: {s: k for k, s in enumerate(items[m])} for m in items}
    return Bank(items, embeds, index), composed


class BankDialogues(Dialogues):
    """Conversations whose media come from the bank (so their embeddings are known): its media
    and, a share `COMPOSED` of the time, composed ones; and, in `conversation`, a share `CORNERS`
    of single questions about media asked of an unseen corner's composed embedding."""

    def __init__(self, bank: Bank, composed: Composed):
        super().__init__(held_out=False, timbre_requests=TIMBRE_REQUESTS)
        self.composed = composed
        extra = {m: set(composed.seen[m]) | set(composed.corners[m]) for m in MODALITIES}
        self.made = {m: [s for s in bank.items[m] if s not in extra[m]] for m in MODALITIES}

    def _draw(self, rng, modality: str):
        seen = self.composed.seen[modality]
        composed = rng.random() < COMPOSED[modality] and seen  # none in a tiny bank
        return rng.choice(seen if composed else self.made[modality])

    def shape(self, rng):
        return self._draw(rng, "image")

    def tone(self, rng):
        return self._draw(rng, "audio")

    def video(self, rng):
        return self._draw(rng, "video")

    def conversation(self, rng) -> Conversation:
        conv = super().conversation(rng)
        if len(conv) == 2 and len(conv[0].media) == 1:  # a single question about one media item
            (modality, _), = conv[0].media.items()
            corners = self.composed.corners[modality]
            if CORNERS[modality] and corners and rng.random() < CORNERS[modality]:
                sample = rng.choice(corners)
                question, answer = QUESTION[modality](rng, sample)
                return [Turn("user", question, {modality: sample}), Turn("assistant", answer)]
        return conv
