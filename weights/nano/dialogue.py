"""Captions and conversations of the nano world, in the released model's template.

A conversation is a list of turns; a user turn may carry media (one item per modality), an
assistant turn may ask for one output (`gen`: modality + the caption its decoder should draw).
Assistant turns that ask for an output end with the modality's signal tokens as one run of
consecutive ids (no spaces between them); the history holds them stripped, as the server does.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from models.signals import SIGNAL_SPECS

from . import world
from .world import ShapeSample, ToneSample, VideoSample


def signal_text(modality: str) -> str:
    return "".join(SIGNAL_SPECS[modality].tokens)


@dataclass
class Turn:
    role: str
    text: str
    media: dict[str, object] = field(default_factory=dict)  # modality -> ShapeSample | ToneSample | VideoSample
    gen: tuple[str, str] | None = None  # (modality, caption) the answer asks a decoder to draw

    def as_text(self) -> str:
        """The turn for a text-only model: media written as their captions in brackets."""
        tags = " ".join(f"({m.caption})" for m in self.media.values())
        return (tags + " " + self.text).strip() if tags else self.text


Conversation = list[Turn]

DESCRIBE_IMAGE = ["What is in this image?", "Describe this image.", "What do you see?", "What is this?"]
ANSWER_IMAGE = ["A {colour} {shape}.", "I see a {colour} {shape}.", "This is a {colour} {shape}."]
ASK_COLOUR = ["What colour is it?", "What colour is the shape?", "What color is this?", "Which colour is this?"]
ANSWER_COLOUR = ["It is {colour}."]
ASK_SHAPE = ["What shape is this?", "What shape is it?", "Which shape do you see?"]
ANSWER_SHAPE = ["It is a {shape}."]
DESCRIBE_AUDIO = ["What does this sound like?", "Describe this sound.", "What is this sound?", "What do you hear?"]
ANSWER_AUDIO = ["A {pitch} {timbre} tone.", "I hear a {pitch} {timbre} tone."]
ASK_PITCH = ["Is this tone high or low?", "What pitch is this tone?", "How high is this sound?", "Is it high or low?"]
ANSWER_PITCH = ["It is a {pitch} tone."]
ASK_TIMBRE = ["What kind of tone is this?", "How does the tone sound?"]
ANSWER_TIMBRE = ["It is a {timbre} tone."]
DESCRIBE_VIDEO = ["Describe this video.", "What happens in this video?", "What is in this video?", "What do you see?"]
ANSWER_VIDEO = ["A {colour} {shape} moving {direction}.", "I see a {colour} {shape} moving {direction}."]
ASK_DIRECTION = ["Which direction does it move?", "Where is the shape going?", "Which way does the shape move?",
                 "Which direction is it moving?"]
ANSWER_DIRECTION = ["It moves {direction}."]
DRAW = ["Show me a {colour} {shape}.", "Draw a {colour} {shape}.", "Can you draw a {colour} {shape}?",
        "Make a picture of a {colour} {shape}.", "Generate an image of a {colour} {shape}."]
PLAY = ["Play me a {desc} tone.", "Play a {desc} tone.", "Make a {desc} sound.", "Let me hear a {desc} tone.",
        "Generate a {desc} tone."]
ANIMATE = ["Animate a {colour} {shape} moving {direction}.", "Show me a video of a {colour} {shape} moving {direction}.",
           "Make a video of a {colour} {shape} moving {direction}.", "Can you animate a {colour} {shape} going {direction}?"]
HERE_IMAGE = "Here is a {colour} {shape}."
HERE_AUDIO = "Here is a {desc} tone."
HERE_VIDEO = "Here is a {colour} {shape} moving {direction}."
REDRAW = ["Draw it in {colour}.", "Now make it {colour}.", "Show me the same shape in {colour}."]
ANIMATE_IT = ["Animate it moving {direction}.", "Now make it move {direction}.", "Make a video of it moving {direction}."]
ASK_BACK_COLOUR = ["What colour was it?", "Which colour did you draw?"]
ANSWER_BACK_COLOUR = ["It was {colour}."]
ASK_BACK_SHAPE = ["What shape was it?", "Which shape did you draw?"]
ANSWER_BACK_SHAPE = ["It was a {shape}."]
SMALL_TALK = [
    ("Hello!", "Hello! I can describe, draw, play and animate shapes and tones."),
    ("What can you do?", "I can see shapes, hear tones and watch moving shapes, and I can draw, play and animate them."),
    ("Thank you.", "You are welcome."),
    ("Who are you?", "I am a small NExT-GPT trained on a world of shapes and tones."),
]


def _fill(rng: random.Random, templates: list[str], **kw) -> str:
    return world.article(rng.choice(templates).format(**kw))


def _shape_kw(s) -> dict:
    return {"colour": s.colour, "shape": s.shape}


def image_question(rng, s: ShapeSample) -> tuple[str, str]:
    kind = rng.choice(("describe", "describe", "colour", "shape"))
    if kind == "describe":
        return _fill(rng, DESCRIBE_IMAGE), _fill(rng, ANSWER_IMAGE, **_shape_kw(s))
    if kind == "colour":
        return _fill(rng, ASK_COLOUR), _fill(rng, ANSWER_COLOUR, **_shape_kw(s))
    return _fill(rng, ASK_SHAPE), _fill(rng, ANSWER_SHAPE, **_shape_kw(s))


def audio_question(rng, t: ToneSample) -> tuple[str, str]:
    kind = rng.choice(("describe", "describe", "pitch", "timbre"))
    kw = {"pitch": t.pitch, "timbre": t.timbre}
    if kind == "describe":
        return _fill(rng, DESCRIBE_AUDIO), _fill(rng, ANSWER_AUDIO, **kw)
    if kind == "pitch":
        return _fill(rng, ASK_PITCH), _fill(rng, ANSWER_PITCH, **kw)
    return _fill(rng, ASK_TIMBRE), _fill(rng, ANSWER_TIMBRE, **kw)


def video_question(rng, v: VideoSample) -> tuple[str, str]:
    kind = rng.choice(("describe", "describe", "direction", "direction", "colour", "shape"))
    kw = {**_shape_kw(v), "direction": v.direction}
    if kind == "describe":
        return _fill(rng, DESCRIBE_VIDEO), _fill(rng, ANSWER_VIDEO, **kw)
    if kind == "direction":
        return _fill(rng, ASK_DIRECTION), _fill(rng, ANSWER_DIRECTION, **kw)
    if kind == "colour":
        return _fill(rng, ASK_COLOUR), _fill(rng, ANSWER_COLOUR, **kw)
    return _fill(rng, ASK_SHAPE), _fill(rng, ANSWER_SHAPE, **kw)


def draw_turns(rng, colour: str, shape: str, ask: str | None = None) -> tuple[Turn, Turn]:
    kw = {"colour": colour, "shape": shape}
    return (Turn("user", ask or _fill(rng, DRAW, **kw)),
            Turn("assistant", world.article(HERE_IMAGE.format(**kw)), gen=("image", world.article(f"a {colour} {shape}"))))


def play_turns(rng, pitch: str | None, timbre: str | None) -> tuple[Turn, Turn]:
    desc = " ".join(a for a in (pitch, timbre) if a)
    return (Turn("user", _fill(rng, PLAY, desc=desc)),
            Turn("assistant", HERE_AUDIO.format(desc=desc), gen=("audio", f"a {desc} tone")))


def animate_turns(rng, colour: str, shape: str, direction: str, ask: str | None = None) -> tuple[Turn, Turn]:
    kw = {"colour": colour, "shape": shape, "direction": direction}
    return (Turn("user", ask or _fill(rng, ANIMATE, **kw)),
            Turn("assistant", world.article(HERE_VIDEO.format(**kw)),
                 gen=("video", world.article(f"a {colour} {shape} moving {direction}"))))


class Dialogues:
    """Draws conversations from the training combinations of the world (`held_out=False`), the
    held-out ones (True) or all of them (None: text only, as a real LLM's pretraining knows every
    phrase of the world's language)."""

    def __init__(self, held_out: bool | None = False, timbre_requests: float = 0.0):
        self.pairs = world.shape_pairs(held_out)
        self.tones = world.tone_pairs(held_out)
        # The share of play requests naming a timbre alone ("Play a buzzy tone."): NExT-GPT's stages
        # ask for some, so that the output projection learns a timbre apart from the pitches it is
        # asked with, as it learns pitches alone. 0 draws nothing (the text-only stream predates it).
        self.timbre_requests = timbre_requests

    def play_request(self, rng) -> tuple[str | None, str | None]:
        """(pitch, timbre) of a play request: a training pair, its pitch alone or its timbre alone."""
        pitch, timbre = rng.choice(self.tones)
        if self.timbre_requests and rng.random() < self.timbre_requests:
            return None, timbre
        return pitch, timbre if rng.random() < 0.6 else None

    # media
    def shape(self, rng):
        return world.random_shape(rng, self.pairs)

    def tone(self, rng):
        return world.random_tone(rng, self.tones)

    def video(self, rng):
        return world.random_video(rng, self.pairs)

    def single(self, rng, kind: str) -> Conversation:
        if kind == "image_q":
            s = self.shape(rng)
            q, a = image_question(rng, s)
            return [Turn("user", q, {"image": s}), Turn("assistant", a)]
        if kind == "audio_q":
            t = self.tone(rng)
            q, a = audio_question(rng, t)
            return [Turn("user", q, {"audio": t}), Turn("assistant", a)]
        if kind == "video_q":
            v = self.video(rng)
            q, a = video_question(rng, v)
            return [Turn("user", q, {"video": v}), Turn("assistant", a)]
        if kind == "draw":
            colour, shape = rng.choice(self.pairs)
            return list(draw_turns(rng, colour, shape))
        if kind == "play":
            return list(play_turns(rng, *self.play_request(rng)))
        if kind == "animate":
            colour, shape = rng.choice(self.pairs)
            return list(animate_turns(rng, colour, shape, rng.choice(list(world.DIRECTIONS))))
        if kind == "talk":
            q, a = rng.choice(SMALL_TALK)
            return [Turn("user", q), Turn("assistant", a)]
        raise ValueError(kind)

    def follow_up(self, rng) -> Conversation:
        kind = rng.choice(("image_then_q", "image_redraw", "image_animate", "draw_then_q", "video_then_q",
                           "audio_then_play", "q_then_draw"))
        if kind == "image_then_q":
            conv = self.single(rng, "image_q")
            s = conv[0].media["image"]
            q, a = image_question(rng, s)
            return conv + [Turn("user", q), Turn("assistant", a)]
        if kind == "image_redraw":  # keep the uploaded shape, change its colour
            s = self.shape(rng)
            colours = [c for c, sh in self.pairs if sh == s.shape and c != s.colour]
            colours = colours or [c for c in world.COLOURS if c != s.colour]  # the held-out set is small
            colour = rng.choice(colours)
            conv = [Turn("user", _fill(rng, DESCRIBE_IMAGE), {"image": s}),
                    Turn("assistant", _fill(rng, ANSWER_IMAGE, **_shape_kw(s)))]
            ask = _fill(rng, REDRAW, colour=colour)
            return conv + list(draw_turns(rng, colour, s.shape, ask))
        if kind == "image_animate":
            s = self.shape(rng)
            direction = rng.choice(list(world.DIRECTIONS))
            conv = [Turn("user", _fill(rng, DESCRIBE_IMAGE), {"image": s}),
                    Turn("assistant", _fill(rng, ANSWER_IMAGE, **_shape_kw(s)))]
            return conv + list(animate_turns(rng, s.colour, s.shape, direction, _fill(rng, ANIMATE_IT, direction=direction)))
        if kind == "draw_then_q":
            colour, shape = rng.choice(self.pairs)
            conv = list(draw_turns(rng, colour, shape))
            if rng.random() < 0.5:
                return conv + [Turn("user", _fill(rng, ASK_BACK_COLOUR)), Turn("assistant", _fill(rng, ANSWER_BACK_COLOUR, colour=colour))]
            return conv + [Turn("user", _fill(rng, ASK_BACK_SHAPE)), Turn("assistant", _fill(rng, ANSWER_BACK_SHAPE, shape=shape))]
        if kind == "video_then_q":
            conv = self.single(rng, "video_q")
            v = conv[0].media["video"]
            q, a = video_question(rng, v)
            return conv + [Turn("user", q), Turn("assistant", a)]
        if kind == "audio_then_play":
            conv = self.single(rng, "audio_q")
            return conv + list(play_turns(rng, *self.play_request(rng)))
        # a question about an image, then an unrelated drawing request
        conv = self.single(rng, "image_q")
        colour, shape = rng.choice(self.pairs)
        return conv + list(draw_turns(rng, colour, shape))

    def conversation(self, rng) -> Conversation:
        r = rng.random()
        if r < 0.3:
            return self.follow_up(rng)
        kinds = ("image_q", "audio_q", "video_q", "draw", "play", "animate", "talk")
        weights = (3, 3, 3, 3, 3, 3, 0.5)
        return self.single(rng, rng.choices(kinds, weights)[0])


def conversation_text(conv: Conversation, with_signals: bool = True) -> str:
    """A media-free conversation in the release's template (media as bracketed captions)."""
    out = []
    for turn in conv:
        if turn.role == "user":
            out.append(f"### Human: {turn.as_text()}")
        else:
            text = turn.text + (signal_text(turn.gen[0]) if (turn.gen and with_signals) else "")
            out.append(f"### Assistant: {text}")
    return "\n".join(out) + "\n###"


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Text for the tokenizers: every template and every word of the world, seen and held out."""
    rng = random.Random(seed)
    lines = []
    for held in (False, True):
        d = Dialogues(held)
        for _ in range(n // 2):
            lines.append(conversation_text(d.conversation(rng), with_signals=False))
    for colour, shape in world.shape_pairs(None):
        for direction in world.DIRECTIONS:
            lines.append(world.article(f"a {colour} {shape} moving {direction}"))
    for pitch, timbre in world.tone_pairs(None):
        lines.append(f"a {pitch} {timbre} tone")
    lines += ["0123456789 , . ; : ! ? ' \" ( ) [ ] - + = / * % & @ # $"]
    return lines
