"""Incremental detokenisation: text deltas as tokens arrive, signal tokens hidden."""
from __future__ import annotations

from typing import Callable


class TextStream:
    """Emits only text that can no longer change: no half UTF-8 characters, and trailing
    whitespace held back (the turn ends with `\\n###`, whose newline the user never sees)."""

    def __init__(self, decode: Callable[[list[int]], str], on_text: Callable[[str], None] | None):
        self.decode = decode
        self.on_text = on_text
        self.ids: list[int] = []
        self.sent = 0  # characters already emitted

    def push(self, token: int) -> None:
        self.ids.append(token)
        if self.on_text is None:
            return
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        stable = len(text.rstrip())
        if stable > self.sent:
            self.on_text(text[self.sent:stable])
            self.sent = stable

    def final_text(self, ids: list[int]) -> str:
        return self.decode(ids).strip()
