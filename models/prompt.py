"""The released model's prompt: template, media tags and the splice of media embeddings.

A conversation becomes a list of segments: text, or one media tag holding the summed projected
embeddings of every item of one modality in one turn, wrapped in `<Img>` ... `</Img>` (audio and
video use the `<Img>` wrappers too, as the release was trained). The legacy reference splits the
prompt around media tags and gives EVERY text segment its own BOS embedding; `bos_per_text_segment`
reproduces that and is on by default because it is what the weights saw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import torch

from .signals import IMG_CLOSE, IMG_OPEN

MEDIA_ORDER = ("image", "audio", "video")  # tag order in a turn: <Image> <Audio> <Video> text
HUMAN = "### Human:"
ASSISTANT = "\n### Assistant:"


@dataclass
class MediaTag:
    modality: str
    embeds: torch.Tensor  # (N, H): one projected embedding per item, summed into one token


@dataclass
class Turn:
    """One user or assistant turn: its text and the projected embeddings of its media."""

    role: str  # "user" | "assistant"
    text: str
    media: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # modality -> [(H,), ...]


Segment = Union[str, MediaTag]


def _media_tags(turn: Turn) -> list[MediaTag]:
    tags = []
    for modality in MEDIA_ORDER:
        items = turn.media.get(modality) or []
        if items:
            tags.append(MediaTag(modality, torch.stack(items)))
    return tags


def build_segments(turns: list[Turn]) -> list[Segment]:
    """Lay out the conversation as the release's template, ending with the model's cue.

    `### Human: <tags> {text}\\n### Assistant: {answer}\\n### Human: ...\\n### Assistant:`
    Text adjacent to a tag loses the separating space, as the reference's split does.
    """
    if not turns or turns[-1].role != "user":
        raise ValueError("the conversation must end with a user turn")
    segments: list[Segment] = []
    pending = ""  # text accumulated since the last media tag
    for turn in turns:
        if turn.role == "user":
            pending += HUMAN if not segments and not pending else "\n" + HUMAN
        else:
            pending += ASSISTANT
        tags = _media_tags(turn)
        if tags:  # the tag splits the text: what came before is one segment, the turn's text starts the next
            segments.append(pending)
            segments.extend(tags)
            pending = turn.text.strip()
        else:
            pending += " " + turn.text.strip()
    segments.append(pending + ASSISTANT)
    return [s for s in segments if not (isinstance(s, str) and s == "")]


def render_text(segments: list[Segment]) -> str:
    """The prompt as the reference's text form, with `<Image>…</Image>` standing for a tag."""
    parts = []
    for seg in segments:
        if isinstance(seg, str):
            parts.append(seg)
        else:
            name = seg.modality.capitalize()
            parts.append(f"<{name}>{'…' * len(seg.embeds)}</{name}>")
    return " ".join(parts)


def splice_embeddings(
    segments: list[Segment],
    tokenize: Callable[[str], list[int]],
    embed: Callable[[torch.Tensor], torch.Tensor],
    bos_id: int,
    bos_per_text_segment: bool = True,
) -> tuple[torch.Tensor, int]:
    """Turn segments into the LLM's input embeddings, LLaVA-style.

    Returns (inputs_embeds (1, T, H), number of text tokens, BOS included). `embed` maps ids (1, n)
    to (1, n, H); a media tag becomes `<Img>` + one summed embedding + `</Img>`.
    """
    device = embed(torch.tensor([[bos_id]])).device
    open_ids = tokenize(IMG_OPEN)
    close_ids = tokenize(IMG_CLOSE)
    pieces: list[torch.Tensor] = []
    n_text = 0
    first_text = True
    for seg in segments:
        if isinstance(seg, str):
            ids = tokenize(seg)
            if bos_per_text_segment or first_text:
                ids = [bos_id] + ids
            first_text = False
            n_text += len(ids)
            pieces.append(embed(torch.tensor([ids], device=device)))
        else:
            summed = seg.embeds.sum(dim=0, keepdim=True).unsqueeze(0)  # (1, 1, H)
            pieces.append(embed(torch.tensor([open_ids], device=device)))
            pieces.append(summed.to(pieces[-1].dtype))
            pieces.append(embed(torch.tensor([close_ids], device=device)))
            n_text += len(open_ids) + len(close_ids)
    return torch.cat(pieces, dim=1), n_text  # (1, T, H)
