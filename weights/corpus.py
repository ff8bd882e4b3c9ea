"""Text the local tokenizers are trained on: the conversation template and a small world."""
from __future__ import annotations

import itertools

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle"]
PITCHES = ["low", "medium", "high"]
DIRECTIONS = ["left", "right", "up", "down"]


def tokenizer_corpus() -> list[str]:
    lines = []
    for colour, shape in itertools.product(COLOURS, SHAPES):
        lines.append(f"### Human: What is in this image?\n### Assistant: A {colour} {shape}.\n###")
        lines.append(f"### Human: Show me a {colour} {shape}.\n### Assistant: Here is a {colour} {shape}.\n###")
        for direction in DIRECTIONS:
            lines.append(f"A {colour} {shape} moving {direction}. Animate it, please.")
    for pitch in PITCHES:
        lines.append(f"### Human: Play me a {pitch} tone.\n### Assistant: Here is a {pitch} tone.\n###")
        lines.append(f"What does this sound like? It is a {pitch} pitched tone, describe the sound.")
    lines += ["Hello! How are you today? I can see, hear and watch; I can draw, play and animate."] * 3
    lines += ["0123456789 , . ; : ! ? ' \" ( ) [ ] - + = / * % & @ # $"]
    return lines
