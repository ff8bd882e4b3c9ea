"""The LoRA-tuned Vicuna and the input projection: the language stage of NExT-GPT."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoTokenizer, LlamaForCausalLM

from .signals import SIGNAL_SPECS, added_tokens


@dataclass(frozen=True)
class LoraSettings:
    r: int = 32  # the release's LoRA rank and alpha
    alpha: int = 32
    dropout: float = 0.1  # training-time only; inference runs in eval mode
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


def check_tokenizer(tokenizer) -> None:
    """The added tokens must be single ids, in release order, after the base vocabulary."""
    tokens = added_tokens()
    ids = tokenizer.convert_tokens_to_ids(tokens)
    base = ids[0]
    if ids != list(range(base, base + len(tokens))):
        raise ValueError("tokenizer lacks NExT-GPT's added tokens in release order")


def stop_token_ids(tokenizer) -> set[int]:
    """`###` (835 in LLaMA's vocabulary) ends a turn, as does EOS."""
    ids = {tokenizer.eos_token_id}
    hashes = tokenizer.convert_tokens_to_ids("###")
    if hashes is not None and hashes != tokenizer.unk_token_id:
        ids.add(hashes)
    return ids


class LanguageModel(nn.Module):
    """Tokenizer + LoRA-wrapped LlamaForCausalLM + `llama_proj` (media embedding -> one token)."""

    def __init__(self, tokenizer, peft_model, media_dim: int):
        super().__init__()
        check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.llama_model = peft_model
        hidden = peft_model.get_base_model().config.hidden_size
        self.llama_proj = nn.Linear(media_dim, hidden)
        self.stop_ids = stop_token_ids(tokenizer)
        self.signal_ids = {
            m: tokenizer.convert_tokens_to_ids(spec.tokens) for m, spec in SIGNAL_SPECS.items()
        }
        self.hidden_ids = set(tokenizer.convert_tokens_to_ids(added_tokens()))

    @classmethod
    def from_pretrained(cls, llm_dir: Path, tokenizer_dir: Path, media_dim: int, lora: LoraSettings,
                        device="cpu", dtype=torch.float32, quantization_config=None) -> "LanguageModel":
        """`quantization_config` (transformers' BitsAndBytesConfig, see placement.bnb_config): the
        base's Linear layers are quantized as they load, straight onto `device` (a GPU); `dtype` is
        then the compute dtype of everything bitsandbytes leaves alone (embeddings, lm_head)."""
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if quantization_config is None:
            base = LlamaForCausalLM.from_pretrained(str(llm_dir), dtype=dtype)
            return cls.from_base(tokenizer, base, media_dim, lora).to(device=device, dtype=dtype).eval()
        base = LlamaForCausalLM.from_pretrained(str(llm_dir), dtype=dtype, quantization_config=quantization_config,
                                                device_map={"": device})
        model = cls.from_base(tokenizer, base, media_dim, lora)  # peft puts LoRA on the bitsandbytes layers
        model.llama_proj.to(device=device, dtype=dtype)  # a quantized model refuses .to(dtype)
        return model.eval()

    @classmethod
    def from_base(cls, tokenizer, base: LlamaForCausalLM, media_dim: int, lora: LoraSettings) -> "LanguageModel":
        """Resize the base vocabulary to the tokenizer's and wrap it with the release's LoRA."""
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        return cls(tokenizer, get_peft_model(base, config), media_dim)

    @torch.no_grad()
    def merge_lora(self) -> bool:
        """Fold the LoRA deltas into the base weights (W += alpha/r * B A), for serving: the same
        function with two small matmuls fewer per adapted projection and token (nano on a CPU:
        264 -> 368 tokens/s). The LoRA weights stay as they are, so the release checkpoint is
        unchanged; a merged model must not be trained. Not for a bitsandbytes-quantized base, where
        a merge would round the deltas into 8 or 4 bits. True when merged."""
        if self.quantized:
            return False
        self.llama_model.merge_adapter()
        return True

    @property
    def lm(self) -> LlamaForCausalLM:
        """The base LlamaForCausalLM, with the LoRA layers injected."""
        return self.llama_model.get_base_model()

    @property
    def quantized(self) -> bool:
        """Loaded through bitsandbytes (transformers keeps the quantizer on the model it loaded)."""
        return getattr(self.lm, "hf_quantizer", None) is not None

    @property
    def device(self) -> torch.device:
        return self.llama_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llama_proj.weight.dtype

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.model.embed_tokens(ids.to(self.device))  # (B, n, H)

    def project_media(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.llama_proj(embedding.to(self.device, self.dtype))  # (H,)

    def decode_text(self, ids: list[int]) -> str:
        """User-facing text: signal and wrapper tokens removed."""
        return self.tokenizer.decode([i for i in ids if i not in self.hidden_ids], skip_special_tokens=True)
