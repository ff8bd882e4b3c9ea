"""ImageBind stage: the vision and audio towers aligned contrastively to a text tower, as
ImageBind aligned its modalities through a shared embedding space.

Inputs go through the very preprocessing the server uses (`models.preprocess`: 224-px crops,
kaldi fbank clips), so the towers see at training what they see when serving. Captions may name
only some attributes ("a red shape", "something moving left"); an item is a positive for every
caption whose attributes it has, so partial captions never count as negatives for their items.
"""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from models import preprocess
from models.encoder import CONFIG_FILE, KEPT_TOWERS, WEIGHTS_FILE, imagebind_model_module

from . import config, world
from .common import Context, train_loop
from .contrastive import caption_sets, contrast, tone_captions

STAGE = "imagebind"
UNNAMED = 0.3  # share of shapes and videos in paints no caption names, and of tones at pitches none names
REVERSED = 0.5  # share of videos also shown backwards in the same batch (direction's hard negatives)
# Where a shape is, which way it moves and which frequencies a tone fills are read from the
# position embeddings. At ImageBind's initial scale (std 0.02) against patch tokens of std ~1, and
# with the vision stem's 6144-input kernel growing its tokens to std ~28 under Adam, they were
# drowned: a linear probe read direction at chance, and even a supervised direction head on the
# tower did not learn in 600 steps. Started at the tokens' scale, with the stems learning slowly,
# the same supervised head learns direction in about 120 steps.
POS_EMBED_STD = 1.0
STEM_LR_SCALE = 0.02


# ----------------------------------------------------------------------------------- captions as attribute sets

def image_captions(s: world.ShapeSample, rng: random.Random) -> tuple[str, frozenset]:
    if s.colour not in world.COLOURS:  # an unnamed paint: only the shape is said
        return f"a {s.shape}", frozenset({s.shape})
    r = rng.random()
    if r < 0.7:
        return s.caption, frozenset({s.colour, s.shape})
    if r < 0.85:
        return world.article(f"a {s.colour} shape"), frozenset({s.colour})
    return f"a {s.shape}", frozenset({s.shape})


def video_captions(v: world.VideoSample, rng: random.Random) -> tuple[str, frozenset]:
    if v.colour not in world.COLOURS:
        if rng.random() < 0.5:
            return f"something moving {v.direction}", frozenset({v.direction})
        return f"a {v.shape} moving {v.direction}", frozenset({v.shape, v.direction})
    r = rng.random()
    if r < 0.6:
        return v.caption, frozenset({v.colour, v.shape, v.direction})
    if r < 0.8:
        return f"something moving {v.direction}", frozenset({v.direction})
    if r < 0.9:
        return world.article(f"a {v.colour} shape moving {v.direction}"), frozenset({v.colour, v.direction})
    return world.article(f"a {v.colour} {v.shape} moving"), frozenset({v.colour, v.shape, "moving"})


# ----------------------------------------------------------------------------------- inputs, as the server prepares them

def video_clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """What `preprocess.video_to_tensor` gives for a square clip of at most 2 s, one clip of
    its 15 identical ones: the first and last frames, scaled to 224 (3, 2, 224, 224)."""
    pair = np.stack([frames[0], frames[-1]])
    x = torch.from_numpy(pair).to(torch.float32).permute(3, 0, 1, 2) / 255.0
    x = preprocess._short_side_scale(x, preprocess.IMAGE_SIZE)
    mean = torch.as_tensor(preprocess.CLIP_MEAN)[:, None, None, None]
    std = torch.as_tensor(preprocess.CLIP_STD)[:, None, None, None]
    return preprocess._three_crops((x - mean) / std, preprocess.IMAGE_SIZE)[1]


def video_clip_tensors(frames: list[np.ndarray], reversed_first: int) -> list[torch.Tensor]:
    """`video_clip_tensor` of each clip, then of the first `reversed_first` clips played backwards:
    the same two frames swapped (the preprocessing treats each frame alone)."""
    clips = [video_clip_tensor(f) for f in frames]
    return clips + [c.flip(1) for c in clips[:reversed_first]]


def vision_batch(images: list[torch.Tensor], clips: list[torch.Tensor]) -> torch.Tensor:
    """Images (3, 224, 224) and clips (3, 2, 224, 224) as one vision batch (B, 1 clip, 3, 2, 224, 224),
    each image as a clip of two equal frames (what the vision stem's PadIm2Video makes of it).
    Written in place: stacking, repeating and concatenating copied these 200 MB three times a step."""
    out = torch.empty(len(images) + len(clips), 3, 2, preprocess.IMAGE_SIZE, preprocess.IMAGE_SIZE)
    for i, image in enumerate(images):
        out[i] = image.unsqueeze(1)  # broadcast over the two frames
    for j, clip in enumerate(clips):
        out[len(images) + j] = clip
    return out.unsqueeze(1)


def audio_embeddings(model, waves: list[np.ndarray]) -> torch.Tensor:
    """ImageBind's audio embedding of each sound (B, D), the mean over its 3 clips as
    `model({"audio": audio_to_tensor batch})` gives it, with each distinct clip run once: most
    training tones are 2 s or less, one clip three times, and the audio tower was the costliest
    part of the stage's step (0.32 s of about 1.0; 0.13 s run once)."""
    clips, counts = zip(*(preprocess.distinct_audio_clips(w) for w in waves))
    emb = model({"audio": torch.cat(clips).unsqueeze(1)})["audio"]  # (K, D): each clip alone
    owner = torch.repeat_interleave(torch.arange(len(waves)), torch.tensor([len(c) for c in clips]))
    share = torch.cat(counts).to(emb.dtype).unsqueeze(1) / preprocess.AUDIO_CLIPS  # (K, 1)
    return emb.new_zeros(len(waves), emb.shape[1]).index_add(0, owner, emb * share)


def random_video_view(rng: random.Random, pairs) -> tuple[world.VideoSample, np.ndarray]:
    """A video and its first and last frames (all `video_clip_tensor` reads) at a random size."""
    v = world.random_video(rng, pairs)
    return v, v.end_frames(size=rng.choice((32, 32, 64)))


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def reversed_video(v: world.VideoSample) -> world.VideoSample:
    """The clip played backwards: the same frames in reverse order."""
    return world.VideoSample(v.colour, v.shape, OPPOSITE[v.direction], v.centres()[-1], v.travel, v.half)


def tone_seconds(rng: random.Random) -> float:
    return world.AUDIO_SECONDS if rng.random() < 0.5 else rng.uniform(0.8, 2.5)


# ----------------------------------------------------------------------------------- model

def build() -> torch.nn.Module:
    return imagebind_model_module().ImageBindModel(**config.IMAGEBIND)


def text_tokenizer():
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    spec = importlib.util.find_spec("imagebind")
    return SimpleTokenizer(str(Path(spec.submodule_search_locations[0]) / "bpe" / "bpe_simple_vocab_16e6.txt.gz"))


def stage_imagebind(ctx: Context) -> dict:
    ctx.seed_torch(STAGE)
    rng = ctx.rng(STAGE)
    model = build().train()
    with torch.no_grad():
        for tower in ("vision", "audio"):
            model.modality_preprocessors[tower].pos_embedding_helper.pos_embed.normal_(0, POS_EMBED_STD)
    tok = text_tokenizer()
    trained = [p for n, p in model.named_parameters() if n.split(".")[1] in ("vision", "audio", "text")]
    for n, p in model.named_parameters():
        p.requires_grad_(n.split(".")[1] in ("vision", "audio", "text"))
    log_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    stems = {id(p) for n, p in model.named_parameters() if ".rgbt_stem." in n}
    groups = [{"params": [p for p in trained if id(p) in stems], "lr_scale": STEM_LR_SCALE},
              {"params": [p for p in trained if id(p) not in stems] + [log_scale]}]
    n = ctx.batch(STAGE)
    pairs = world.shape_pairs()

    unnamed = world.unnamed_pairs()

    def step(i):
        shapes = [world.random_shape(rng, unnamed if rng.random() < UNNAMED else pairs) for _ in range(n)]
        views = [random_video_view(rng, unnamed if rng.random() < UNNAMED else pairs) for _ in range(n)]
        # hard negatives: the same clip played backwards moves the other way, and nothing else differs
        videos = [v for v, _ in views] + [reversed_video(v) for v, _ in views[: int(n * REVERSED)]]
        sounds = [world.training_tone(rng, UNNAMED, tone_seconds) for _ in range(n)]
        items = shapes + videos + sounds
        caps = ([image_captions(s, rng) for s in shapes] + [video_captions(v, rng) for v in videos]
                + [tone_captions(t, rng) for t in sounds])
        texts, own, pos, unknown = caption_sets(items, caps)
        imgs = [preprocess.image_to_tensor(world.encoder_view(s, rng)) for s in shapes]
        vision = vision_batch(imgs, video_clip_tensors([f for _, f in views], reversed_first=len(videos) - n))
        out = model({"vision": vision, "text": tok(texts)})
        media = F.normalize(torch.cat([out["vision"], audio_embeddings(model, [t.wave() for t in sounds])]), dim=-1)
        txt = F.normalize(out["text"], dim=-1)
        scale = log_scale.exp().clamp(max=100)
        split = len(shapes) + len(videos)
        loss = (contrast(media[:split], txt, own[:split], pos[:split], scale, unknown[:split])
                + contrast(media[split:], txt, own[split:], pos[split:], scale, unknown[split:]))
        return {"loss": loss, "scale": scale.detach()}

    holder = torch.nn.Module()
    holder.log_scale = log_scale
    info = train_loop(STAGE, ctx, None, step, lr=1e-3, weight_decay=0.05, param_groups=groups,
                      modules={"model": model, "scale": holder}, rng=rng)
    model.eval()
    out = ctx.dir(STAGE)
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "full.safetensors"))
    save_towers(out, {k: v for k, v in state.items() if k.split(".")[1] in KEPT_TOWERS})
    return {**info, **zero_shot(model, tok, ctx.rng(STAGE, 1))}


def save_towers(out: Path, towers: dict[str, torch.Tensor]) -> None:
    """The kept towers and nano's ImageBind config, as `ImageBindEncoder.from_pretrained` reads them:
    what the stage writes, `--encoder-from` takes back and assembly ships (in fp16)."""
    save_file({k: v.contiguous() for k, v in towers.items()}, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config.IMAGEBIND, indent=2))


@torch.no_grad()
def zero_shot(model, tok, rng: random.Random, n: int = 48) -> dict:
    """Held-out items against every full caption of the world: attribute accuracy of the best match."""
    res = {}
    img_caps = [world.article(f"a {c} {s}") for c, s in world.shape_pairs(None)]
    text = F.normalize(model({"text": tok(img_caps)})["text"], dim=-1)
    held = sorted(world.HELD_OUT_SHAPES)
    shapes = [world.random_shape(rng, held) for _ in range(n)]
    emb = F.normalize(model({"vision": torch.stack([preprocess.image_to_tensor(s.image(64)) for s in shapes])})["vision"], dim=-1)
    best = (emb @ text.T).argmax(1)
    pairs = world.shape_pairs(None)
    res["zs_image_colour"] = float(np.mean([pairs[b][0] == s.colour for b, s in zip(best.tolist(), shapes)]))
    res["zs_image_shape"] = float(np.mean([pairs[b][1] == s.shape for b, s in zip(best.tolist(), shapes)]))
    vid_caps = [(c, s, d) for c, s in pairs for d in world.DIRECTIONS]
    text = F.normalize(model({"text": tok([world.article(f"a {c} {s} moving {d}") for c, s, d in vid_caps])})["text"], dim=-1)
    videos = [world.random_video(rng, held) for _ in range(n)]
    emb = F.normalize(model({"vision": torch.stack([video_clip_tensor(v.frames()) for v in videos]).unsqueeze(1)})["vision"], dim=-1)
    best = (emb @ text.T).argmax(1).tolist()
    res["zs_video_direction"] = float(np.mean([vid_caps[b][2] == v.direction for b, v in zip(best, videos)]))
    res["zs_video_colour"] = float(np.mean([vid_caps[b][0] == v.colour for b, v in zip(best, videos)]))
    tone_caps = world.tone_pairs(None)
    text = F.normalize(model({"text": tok([f"a {p} {t} tone" for p, t in tone_caps])})["text"], dim=-1)
    tones = [world.random_tone(rng, sorted(world.HELD_OUT_TONES)) for _ in range(n)]
    emb = F.normalize(model({"audio": torch.stack([preprocess.audio_to_tensor(t.wave()) for t in tones])})["audio"], dim=-1)
    best = (emb @ text.T).argmax(1).tolist()
    res["zs_audio_pitch"] = float(np.mean([tone_caps[b][0] == t.pitch for b, t in zip(best, tones)]))
    res["zs_audio_timbre"] = float(np.mean([tone_caps[b][1] == t.timbre for b, t in zip(best, tones)]))
    res.update(probes(model, rng))
    return res


@torch.no_grad()
def probes(model, rng: random.Random, n: int = 240) -> dict:
    """Linear probes fitted on training combinations, scored on held-out ones: is shape (and
    direction) readable from the embedding whatever the colour, pitch whatever the timbre? The
    input projection is such a linear read: a tone's attribute a probe misreads is one the
    language stages learn to answer only by luck."""
    def embed(kind, samples):
        if kind == "audio":
            x = torch.stack([preprocess.audio_to_tensor(t.wave()) for t in samples])
            return F.normalize(model({"audio": x})["audio"], dim=-1)
        if kind == "image":
            x = torch.stack([preprocess.image_to_tensor(world.encoder_view(s, rng)) for s in samples])
        else:
            x = torch.stack([video_clip_tensor(v.frames(size=64)) for v in samples]).unsqueeze(1)
        return F.normalize(model({"vision": x})["vision"], dim=-1)

    def fit(xtr, ytr, xte, yte, classes):
        with torch.enable_grad():
            w = torch.zeros(xtr.shape[1], len(classes), requires_grad=True)
            opt = torch.optim.Adam([w], 0.05)
            yt = torch.tensor([classes.index(v) for v in ytr])
            for _ in range(300):
                loss = F.cross_entropy(10 * xtr @ w, yt)
                opt.zero_grad()
                loss.backward()
                opt.step()
        ye = torch.tensor([classes.index(v) for v in yte])
        return float(((xte @ w).argmax(1) == ye).float().mean())

    held = sorted(world.HELD_OUT_SHAPES)
    tr = [world.random_shape(rng, world.shape_pairs()) for _ in range(n)]
    te = [world.random_shape(rng, held) for _ in range(n // 3)]
    a, b = embed("image", tr), embed("image", te)
    out = {"probe_image_shape": fit(a, [s.shape for s in tr], b, [s.shape for s in te], list(world.SHAPES)),
           "probe_image_colour": fit(a, [s.colour for s in tr], b, [s.colour for s in te], list(world.COLOURS))}
    trv = [world.random_video(rng, world.shape_pairs()) for _ in range(n)]
    tev = [world.random_video(rng, held) for _ in range(n // 3)]
    a, b = embed("video", trv), embed("video", tev)
    out["probe_video_direction"] = fit(a, [v.direction for v in trv], b, [v.direction for v in tev], list(world.DIRECTIONS))
    out["probe_video_shape"] = fit(a, [v.shape for v in trv], b, [v.shape for v in tev], list(world.SHAPES))
    trt = [world.random_tone(rng, world.tone_pairs()) for _ in range(n)]
    tet = [world.random_tone(rng, sorted(world.HELD_OUT_TONES)) for _ in range(n // 3)]
    a, b = embed("audio", trt), embed("audio", tet)
    out["probe_audio_pitch"] = fit(a, [t.pitch for t in trt], b, [t.pitch for t in tet], list(world.PITCHES))
    out["probe_audio_timbre"] = fit(a, [t.timbre for t in trt], b, [t.timbre for t in tet], list(world.TIMBRES))
    return out


def load_full(work: Path) -> torch.nn.Module:
    model = build()
    model.load_state_dict(load_file(str(work / STAGE / "full.safetensors")))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """`python -m weights.nano.encoder WORK_DIR`: the `imagebind` stage's zero-shot and probe
    figures again, for the towers trained under WORK_DIR (seconds; no training)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m weights.nano.encoder", description=main.__doc__)
    p.add_argument("work", type=Path, help="a train-nano work directory whose imagebind stage is done")
    p.add_argument("--seed", type=int, default=0, help="the run's --seed (the same samples as the stage drew)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    ctx = Context(work=args.work, seed=args.seed)
    res = zero_shot(load_full(ctx.work), text_tokenizer(), ctx.rng(STAGE, 1))  # the stream the stage's figures drew
    for name, value in res.items():
        print(f"{name:24s} {value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
