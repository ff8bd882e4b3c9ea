"""The nano world: coloured shapes, tones and moving shapes, with their captions and the
conversations NExT-GPT's stages train on, all drawn from a seeded random generator.

Every sample is a pure function of (seed, index), so a stage that is re-run sees the same data.
Some attribute combinations are held out: no training stage makes media of them (`instruct`
talks about sums of seen tones' embeddings that compose to one, `bank.CORNERS`); the eval asks
about them.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ----------------------------------------------------------------------------------- attributes

COLOURS = {  # name -> RGB on a white background
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 205, 30),
    "purple": (140, 55, 190),
    "orange": (245, 135, 25),
}
# Paints no caption ever names: the encoder sees shapes and motions in them so that its shape and
# direction features cannot lean on colour (the held-out colour/shape pairs depend on that).
UNNAMED_PAINTS = {
    "gray": (128, 128, 128), "brown": (130, 85, 40), "pink": (240, 120, 180), "teal": (0, 150, 150),
    "black": (25, 25, 25), "olive": (120, 120, 0), "navy": (20, 30, 110), "lime": (150, 230, 60),
}
PAINTS = {**COLOURS, **UNNAMED_PAINTS}
SHAPES = ("circle", "square", "triangle")
# The fraction of its bounding box each shape fills: how the eval tells shapes apart.
FILL_RATIO = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
# "high" ends at 2.2 kHz so that an unnamed band (2.4-3.4 kHz) shares the encoder's patch row
# with it (its fbank rows are cut 16 at a time: about 1.8-2.7 kHz is one row). Up to session 18
# "high" (1.7-2.6 kHz) filled that row alone, so no buzzy tone was ever heard in the row a
# held-out high buzzy tone lies in, and the towers, which tie what they hear to its row, heard it
# as pure (docs/nano-history.md, sessions 15 and 19).
PITCHES = {"low": (200.0, 320.0), "medium": (550.0, 850.0), "high": (1700.0, 2200.0)}  # Hz
# Pitch bands no caption names (below, between and above the named ones). The encoder hears every
# timbre in them, captioned by its timbre alone, so that its timbre features cannot lean on the
# pitches each timbre was heard at (the held-out pitch/timbre pairs depend on that). A caption
# that would fit such a tone if the pitch it has by `pitch_of` were named ("a high tone" for
# 2.6 kHz) counts neither way for it (`contrastive.unjudged`); one naming another pitch or
# another timbre is its negative.
UNNAMED_PITCHES = ((120.0, 170.0), (360.0, 480.0), (950.0, 1650.0), (2400.0, 3400.0))  # Hz
# What the audio decoder's captions (and nothing else) call those bands: the UNet plays every
# timbre at every register, pitch and timbre uncorrelated as they are not in the named bands, and
# composes a held-out pair better (docs/nano-history.md, session 18). The language stages never
# say these words; the encoder hears unnamed tones captioned by timbre alone.
REGISTERS = ("bass", "tenor", "treble", "whistle")
PITCH_EDGES = (420.0, 1300.0)  # spectral-peak thresholds between low | medium | high
TIMBRES = ("pure", "buzzy", "beeping")
# A buzzy tone pulses: its loudness rises from silence and falls back BUZZ_HZ times a second, in
# short smooth bursts (a raised cosine to the power BUZZ_SHARPNESS), with nothing outside its own
# band, at every pitch. Until session 19 buzzy was the fundamental plus its third harmonic: the
# encoder's patches are tied to their place, a held-out high buzzy tone's third harmonic lay where
# no training tone ever had a partial, and it was heard as pure (docs/nano-history.md). A pattern
# in time in the tone's own band is read by the same stem kernel at every pitch: session 11's 8 Hz
# swell was heard at its held-out pitch 94% of the time, session 15's shallow 20 Hz flutter (a
# ripple a third as deep in the encoder's fbank) 2 times in 12. Sharp bursts deepen the ripple
# (fbank std 0.27 -> 0.72) without the broadband clicks of a hard gate; 8 a second stays slow
# enough for the audio decoder's 64 ms mel window to see it.
BUZZ_HZ = 8.0
BUZZ_SHARPNESS = 4
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

# Combinations no training stage ever sees (images and videos share the colour/shape ones).
HELD_OUT_SHAPES = {("green", "triangle"), ("purple", "circle"), ("orange", "square")}
HELD_OUT_TONES = {("high", "buzzy"), ("low", "beeping")}

IMAGE_SIZE = 32  # what the image and video decoders draw
VIDEO_FRAMES = 8
VIDEO_FPS = 8
SAMPLE_RATE = 16000
AUDIO_SECONDS = 1.024  # what the audio decoder plays (64 mel frames)
BACKGROUND = (255, 255, 255)


def article(text: str) -> str:
    """"a orange circle" -> "an orange circle" (the only colour that needs it)."""
    return text.replace("a orange", "an orange").replace("A orange", "An orange")


def shape_pairs(held_out: bool | None = False) -> list[tuple[str, str]]:
    """(colour, shape) pairs: the training ones (False), the held-out ones (True) or all (None)."""
    pairs = list(itertools.product(COLOURS, SHAPES))
    if held_out is None:
        return pairs
    return [p for p in pairs if (p in HELD_OUT_SHAPES) == held_out]


def tone_pairs(held_out: bool | None = False) -> list[tuple[str, str]]:
    pairs = list(itertools.product(PITCHES, TIMBRES))
    if held_out is None:
        return pairs
    return [p for p in pairs if (p in HELD_OUT_TONES) == held_out]


# ----------------------------------------------------------------------------------- images

def _shape_points(shape: str, cx: float, cy: float, half: float):
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    return [cx - half, cy - half, cx + half, cy + half]


def draw_shape(img: Image.Image, shape: str, colour: str, cx: float, cy: float, half: float, scale: float) -> None:
    d = ImageDraw.Draw(img)
    pts = _shape_points(shape, cx * scale, cy * scale, half * scale)
    rgb = PAINTS[colour]
    if shape == "circle":
        d.ellipse(pts, fill=rgb)
    elif shape == "square":
        d.rectangle(pts, fill=rgb)
    else:
        d.polygon(pts, fill=rgb)


def render(shape: str, colour: str, cx: float, cy: float, half: float, size: int = IMAGE_SIZE) -> Image.Image:
    """One shape on white, drawn at 4x and downsampled (anti-aliased). Coordinates in a 32-px frame."""
    scale = size / IMAGE_SIZE * 4
    big = Image.new("RGB", (size * 4, size * 4), BACKGROUND)
    draw_shape(big, shape, colour, cx, cy, half, scale)
    return big.resize((size, size), Image.BOX)


@dataclass(frozen=True)
class ShapeSample:
    colour: str
    shape: str
    cx: float
    cy: float
    half: float

    @property
    def caption(self) -> str:
        return article(f"a {self.colour} {self.shape}")

    def image(self, size: int = IMAGE_SIZE) -> Image.Image:
        return render(self.shape, self.colour, self.cx, self.cy, self.half, size)


def random_shape(rng: random.Random, pairs: list[tuple[str, str]]) -> ShapeSample:
    colour, shape = rng.choice(pairs)
    half = rng.uniform(6.0, 10.0)
    cx = rng.uniform(half + 2, IMAGE_SIZE - half - 2)
    cy = rng.uniform(half + 2, IMAGE_SIZE - half - 2)
    return ShapeSample(colour, shape, cx, cy, half)


# ----------------------------------------------------------------------------------- videos

@dataclass(frozen=True)
class VideoSample:
    colour: str
    shape: str
    direction: str
    start: tuple[float, float]
    travel: float
    half: float

    @property
    def caption(self) -> str:
        return article(f"a {self.colour} {self.shape} moving {self.direction}")

    def centres(self, frames: int = VIDEO_FRAMES) -> list[tuple[float, float]]:
        dx, dy = DIRECTIONS[self.direction]
        return [(self.start[0] + dx * self.travel * t / (frames - 1), self.start[1] + dy * self.travel * t / (frames - 1))
                for t in range(frames)]

    def frames(self, size: int = IMAGE_SIZE, frames: int = VIDEO_FRAMES) -> np.ndarray:
        """(F, H, W, 3) uint8."""
        return self._render(size, self.centres(frames))

    def end_frames(self, size: int = IMAGE_SIZE) -> np.ndarray:
        """(2, H, W, 3) uint8: the first and last of `frames`, all that ImageBind's 2-frame clip of
        a short video shows, without drawing the six between."""
        centres = self.centres()
        return self._render(size, [centres[0], centres[-1]])

    def _render(self, size: int, centres: list[tuple[float, float]]) -> np.ndarray:
        return np.stack([np.asarray(render(self.shape, self.colour, x, y, self.half, size)) for x, y in centres])


def unnamed_pairs() -> list[tuple[str, str]]:
    """(paint, shape) pairs in paints no caption names."""
    return list(itertools.product(UNNAMED_PAINTS, SHAPES))


def random_video(rng: random.Random, pairs: list[tuple[str, str]], directions=tuple(DIRECTIONS)) -> VideoSample:
    colour, shape = rng.choice(pairs)
    direction = rng.choice(list(directions))
    half = rng.uniform(4.5, 6.5)
    travel = rng.uniform(12.0, 18.0)
    lo, hi = half + 1, IMAGE_SIZE - half - 1
    dx, dy = DIRECTIONS[direction]
    along = lo + (hi - lo - travel) * rng.random()  # where the run starts along the motion axis
    if dx < 0 or dy < 0:
        along = hi - (along - lo)
    across = rng.uniform(lo, hi)
    start = (along, across) if dx else (across, along)
    return VideoSample(colour, shape, direction, start, travel, half)


# ----------------------------------------------------------------------------------- audio

@dataclass(frozen=True)
class ToneSample:
    pitch: str | None  # None: in a band no caption names (`UNNAMED_PITCHES`)
    timbre: str
    freq: float
    amplitude: float
    seconds: float = AUDIO_SECONDS
    phase: float = 0.0
    with_timbre: bool = True  # the caption names the timbre

    @property
    def register(self) -> str | None:
        """The audio decoder's word for the unnamed band the tone is in (`REGISTERS`); None if named."""
        if self.pitch is not None:
            return None
        return next(r for r, (lo, hi) in zip(REGISTERS, UNNAMED_PITCHES) if lo <= self.freq <= hi)

    @property
    def caption(self) -> str:
        pitch = self.pitch or self.register
        return f"a {pitch} {self.timbre} tone" if self.with_timbre else f"a {pitch} tone"

    def wave(self) -> np.ndarray:
        n = int(round(self.seconds * SAMPLE_RATE))
        t = np.arange(n) / SAMPLE_RATE
        w = np.sin(2 * np.pi * self.freq * t + self.phase)
        if self.timbre == "buzzy":  # pulses in its own band at every pitch: see BUZZ_HZ
            w = w * (0.5 - 0.5 * np.cos(2 * np.pi * BUZZ_HZ * t)) ** BUZZ_SHARPNESS
        if self.timbre == "beeping":  # 4 beeps a second
            gate = ((t * 4.0) % 1.0) < 0.5
            ramp = np.convolve(gate.astype(float), np.ones(80) / 80, mode="same")
            w = w * ramp
        fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
        return (self.amplitude * w * fade).astype(np.float32)


def frequency_in(rng: random.Random, band: tuple[float, float]) -> float:
    """A frequency drawn uniformly on a log scale (as pitch is heard) within (lo, hi) Hz."""
    lo, hi = band
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_tone(rng: random.Random, pairs: list[tuple[str, str]], seconds: float = AUDIO_SECONDS,
                drop_timbre: float = 0.0) -> ToneSample:
    pitch, timbre = rng.choice(pairs)
    freq = frequency_in(rng, PITCHES[pitch])
    return ToneSample(pitch, timbre, freq, rng.uniform(0.25, 0.5), seconds, rng.uniform(0, 2 * np.pi),
                      with_timbre=rng.random() >= drop_timbre)


def unnamed_pitch_tone(rng: random.Random, seconds: float = AUDIO_SECONDS, drop_timbre: float = 0.0) -> ToneSample:
    """A tone of any timbre in a pitch band no caption names (its register's)."""
    freq = frequency_in(rng, rng.choice(UNNAMED_PITCHES))
    # the last draw only with drop_timbre: the encoder's stream, which has none, predates it
    return ToneSample(None, rng.choice(TIMBRES), freq, rng.uniform(0.25, 0.5), seconds, rng.uniform(0, 2 * np.pi),
                      with_timbre=not (drop_timbre and rng.random() < drop_timbre))


def training_tone(rng: random.Random, unnamed: float, seconds_of=lambda rng: AUDIO_SECONDS,
                  drop_timbre: float = 0.0) -> ToneSample:
    """A training tone: with probability `unnamed` at a pitch no caption names (the encoder's
    captions name its timbre alone, the audio decoder's its register too), else a training pair;
    `seconds_of(rng)` draws its length."""
    if rng.random() < unnamed:
        return unnamed_pitch_tone(rng, seconds_of(rng), drop_timbre)
    return random_tone(rng, tone_pairs(), seconds=seconds_of(rng), drop_timbre=drop_timbre)


def pitch_of(freq: float) -> str:
    return "low" if freq < PITCH_EDGES[0] else "medium" if freq < PITCH_EDGES[1] else "high"


# ----------------------------------------------------------------------------------- augmentation for the encoder

def encoder_view(sample: ShapeSample, rng: random.Random) -> Image.Image:
    """The image as a user might upload it or as the decoder draws it: varied size, some blur."""
    size = rng.choice((32, 32, 48, 64, 96, 128))
    img = sample.image(size)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * size / 32))
    if rng.random() < 0.3:
        arr = np.asarray(img).astype(np.float32) + np.random.default_rng(rng.getrandbits(32)).normal(0, 8, (size, size, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img
