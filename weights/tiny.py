"""The `tiny` preset: NExT-GPT's exact architecture at toy sizes, deterministic random weights.

Every component is the real class (ImageBindModel, LlamaForCausalLM + peft LoRA, nn.Transformer
output projections, stock diffusers pipelines) saved in the same on-disk layout as the assembled
release, so loading `tiny` runs the same code paths as loading the real model.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.checkpoint import CHECKPOINT_FILE, release_targets
from models.config import Components, LoraSpec, ModelConfig, ProjectionSpec
from models.encoder import CONFIG_FILE as ENCODER_CONFIG, WEIGHTS_FILE as ENCODER_WEIGHTS
from models.encoder import imagebind_model_module
from models.llm import LanguageModel, LoraSettings
from models.nextgpt import build_projections

from . import tiny_decoders
from .corpus import tokenizer_corpus
from .tokenizers_local import llama_tokenizer

SEED = 0
# The ImageBind sizes of shared/OFFLINE.md: every tower real, 1.8 M parameters.
TINY_IMAGEBIND = dict(
    out_embed_dim=32, vision_embed_dim=32, vision_num_blocks=2, vision_num_heads=2,
    audio_embed_dim=32, audio_num_blocks=2, audio_num_heads=2, text_embed_dim=32,
    text_num_blocks=2, text_num_heads=2, depth_embed_dim=16, depth_num_blocks=1, depth_num_heads=2,
    thermal_embed_dim=16, thermal_num_blocks=1, thermal_num_heads=2, imu_embed_dim=16,
    imu_num_blocks=1, imu_num_heads=2,
)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False)
TINY_CONDITION_DIM = 32  # the tiny decoders' text-conditioning width
TINY_PROJECTION = dict(d_model=32, nhead=2, num_layers=1, dim_feedforward=64)
# Small enough for fast tests; the release's defaults are the decoders' dataclass defaults.
TINY_DECODER_DEFAULTS = {
    "image": {"num_inference_steps": 4, "height": 32, "width": 32},
    "audio": {"num_inference_steps": 4, "audio_length_in_s": 1.0},
    "video": {"num_inference_steps": 2, "num_frames": 8, "height": 32, "width": 32},
}


def small_config(name: str, media_dim: int, lora: LoraSpec, condition_dim: int, projection: dict,
                 decoder_defaults: dict) -> ModelConfig:
    """A model config with one conditioning width for all three decoders (tiny's and nano's)."""
    return ModelConfig(
        name=name,
        media_dim=media_dim,
        lora=lora,
        projections={
            "image": ProjectionSpec(out_dim=condition_dim, num_queries=77, **projection),
            "video": ProjectionSpec(out_dim=condition_dim, num_queries=77, **projection),
            "audio": ProjectionSpec(out_dim=condition_dim, num_queries=1, **projection),
        },
        decoder_defaults=decoder_defaults,
        components=Components(),
    )


def tiny_config() -> ModelConfig:
    return small_config("nextgpt-tiny", TINY_IMAGEBIND["out_embed_dim"], LoraSpec(r=4, alpha=8, dropout=0.1),
                        TINY_CONDITION_DIM, TINY_PROJECTION, TINY_DECODER_DEFAULTS)


def save_state(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None) -> None:
    tensors = {k: (v.detach().to(dtype) if dtype else v.detach()).contiguous().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def build_imagebind(out: Path) -> None:
    torch.manual_seed(SEED)
    model = imagebind_model_module().ImageBindModel(**TINY_IMAGEBIND)
    (out / "imagebind").mkdir(parents=True, exist_ok=True)
    (out / "imagebind" / ENCODER_CONFIG).write_text(json.dumps(TINY_IMAGEBIND, indent=2))
    save_state(model.state_dict(), out / "imagebind" / ENCODER_WEIGHTS)


def build_language(out: Path, config: ModelConfig) -> None:
    """The Vicuna stand-in (base vocabulary only, as the delta-applied base is), then the
    release checkpoint: LoRA, whole embed_tokens / lm_head, llama_proj, output projections."""
    from transformers import LlamaConfig, LlamaForCausalLM

    parts = config.components
    tokenizer = llama_tokenizer(tokenizer_corpus(), out / parts.nextgpt)
    torch.manual_seed(SEED)
    sp_vocab = tokenizer.convert_tokens_to_ids("<Img>")  # the base vocabulary ends where NExT-GPT's tokens begin
    base = LlamaForCausalLM(LlamaConfig(vocab_size=sp_vocab, bos_token_id=1, eos_token_id=2, **TINY_LLAMA))
    base.save_pretrained(str(out / parts.llm))
    lora = LoraSettings(r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout)
    llm = LanguageModel.from_base(tokenizer, base, config.media_dim, lora)
    with torch.no_grad():  # peft starts LoRA B at zero: give it values so the LoRA path is exercised
        for name, param in llm.llama_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    projections = build_projections(config, TINY_LLAMA["hidden_size"])
    state = release_targets(llm, dict(projections))
    save_state(state, out / parts.nextgpt / CHECKPOINT_FILE, dtype=torch.float16)  # fp16, as released


def build_tiny(out: Path) -> Path:
    """Write the tiny preset to `out` atomically (a half-built directory is never left behind)."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent if out.parent.exists() else None))
    try:
        config = tiny_config()
        build_imagebind(tmp)
        build_language(tmp, config)
        tiny_decoders.build_all(tmp, config, seed=SEED)
        config.save(tmp)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
