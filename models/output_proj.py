"""NExT-GPT's output projection: signal-token hidden states -> a decoder's conditioning.

Built exactly as the release's `TextFcLayer` in transformer mode, so `state_dict()` keys match the
checkpoint (`fc.*`, `tfm.encoder.*`, `tfm.decoder.*`, `model.*`, `query_embs`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class OutputProjectionConfig:
    in_dim: int  # the LLM's hidden size (4096 for Vicuna-7B)
    out_dim: int  # the decoder's conditioning width (768 SD, 1024 Zeroscope, 512 AudioLDM)
    num_queries: int  # conditioning length (77 for CLIP-conditioned decoders, 1 for AudioLDM)
    d_model: int = 512  # the release's transformer width, fixed for every modality
    nhead: int = 4
    num_layers: int = 4  # both encoder and decoder
    dim_feedforward: int = 2048


class OutputProjection(nn.Module):
    def __init__(self, cfg: OutputProjectionConfig):
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(cfg.in_dim, cfg.d_model)
        self.tfm = nn.Transformer(
            d_model=cfg.d_model,
            nhead=cfg.nhead,
            num_encoder_layers=cfg.num_layers,
            num_decoder_layers=cfg.num_layers,
            dim_feedforward=cfg.dim_feedforward,
            dropout=0.0,
            norm_first=True,
            batch_first=True,
        )
        self.model = nn.Linear(cfg.d_model, cfg.out_dim)
        self.query_embs = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.d_model))

    def forward(self, hidden: torch.Tensor, signal_embeds: torch.Tensor) -> torch.Tensor:
        """hidden, signal_embeds: (B, N, in_dim) -> (B, num_queries, out_dim).

        `hidden` are last-layer (post-norm) states at the N signal positions; `signal_embeds` the
        LLM's own input embeddings of those signal ids, added as the release does.
        """
        x = self.fc(hidden + signal_embeds)  # (B, N, d_model)
        queries = self.query_embs.repeat(x.shape[0], 1, 1)  # (B, Q, d_model)
        x = self.tfm(src=x, tgt=queries)  # (B, Q, d_model)
        return self.model(x)  # (B, Q, out_dim)
