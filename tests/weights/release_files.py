"""The release's repositories at tiny size, made from the tiny preset.

Same repository ids, file names and formats as the real release (a pickled `pytorch_model.pt`,
2023-style tokenizer files, LLaMA base in safetensors AND pickles, the Vicuna delta as pickled
shards with v0's extra [PAD] row and old rotary buffers, `imagebind_huge.pth`, diffusers repos
with fp16 variants, pickles, a safety checker and root checkpoints the server must not fetch),
so the fetch code meets what it will meet on the hub.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save

from models.signals import added_tokens

PAD_ROW_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


def pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": False}


def tokenizer_files(tokenizer_model: bytes) -> dict[str, bytes]:
    """The release's tokenizer as transformers 4.29 saved it: sentencepiece + added_tokens.json."""
    import sentencepiece as spm

    base = spm.SentencePieceProcessor(model_proto=tokenizer_model).get_piece_size()
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": _token("<s>"),
              "clean_up_tokenization_spaces": False, "eos_token": _token("</s>"), "model_max_length": 2048,
              "pad_token": None, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
              "unk_token": _token("<unk>")}
    special = {"bos_token": _token("<s>"), "eos_token": _token("</s>"), "pad_token": "<unk>",
               "unk_token": _token("<unk>")}
    return {"tokenizer.model": tokenizer_model, "tokenizer_config.json": json.dumps(config).encode(),
            "special_tokens_map.json": json.dumps(special).encode(),
            "added_tokens.json": json.dumps({t: base + i for i, t in enumerate(added_tokens())}).encode()}


def nextgpt_repo(tiny: Path) -> dict[str, bytes]:
    checkpoint = load_file(str(tiny / "nextgpt" / "pytorch_model.safetensors"))
    files = tokenizer_files((tiny / "nextgpt" / "tokenizer.model").read_bytes())
    files.update({"pytorch_model.pt": pickled(dict(checkpoint)), "config.json": b'{"stage": 3}',
                  "README.md": b"# NExT-GPT 7b_tiva_v0\n"})
    return files


def shards(state: dict, stem: str, suffix: str) -> dict[str, bytes]:
    """Two shards and their index, in transformers' naming."""
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    files, weight_map = {}, {}
    for i, half in enumerate(halves, 1):
        name = f"{stem}-{i:05d}-of-00002.{suffix}"
        part = {k: state[k].contiguous() for k in half}
        files[name] = save(part) if suffix == "safetensors" else pickled(part)
        weight_map.update({k: name for k in half})
    files[f"{stem}.{suffix}.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files


def llama_repos(tiny: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A LLaMA base and a Vicuna v0 delta such that base + delta is the tiny preset's LLM."""
    vicuna = load_file(str(tiny / "llm" / "model.safetensors"))
    config = json.loads((tiny / "llm" / "config.json").read_text())
    gen = torch.Generator().manual_seed(1)
    base = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in vicuna.items()}
    delta = {k: vicuna[k] - base[k] for k in vicuna}
    for key in PAD_ROW_KEYS:  # v0's delta has one more vocabulary row ([PAD])
        delta[key] = torch.cat([delta[key], torch.randn(1, delta[key].shape[1], generator=gen)])
    delta["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # an old, recomputed buffer
    tokenizer = tokenizer_files((tiny / "nextgpt" / "tokenizer.model").read_bytes())
    base_files = {"config.json": json.dumps(config).encode(), "README.md": b"# LLaMA-7B\n",
                  **shards(base, "model", "safetensors"), **shards(base, "pytorch_model", "bin"),
                  "tokenizer.model": tokenizer["tokenizer.model"]}
    delta_config = dict(config, vocab_size=config["vocab_size"] + 1)
    delta_files = {"config.json": json.dumps(delta_config).encode(), **shards(delta, "pytorch_model", "bin"),
                   "tokenizer.model": tokenizer["tokenizer.model"]}
    return base_files, delta_files


def with_variants_and_pickles(files: dict[str, bytes]) -> dict[str, bytes]:
    """Beside each safetensors file, its fp16 variant and a pickled copy (as SD 1.5's repo has)."""
    out = dict(files)
    for name, data in files.items():
        if name.endswith(".safetensors"):
            state = load(data)
            stem = name.removesuffix(".safetensors")
            out[f"{stem}.fp16.safetensors"] = save({k: v.half() for k, v in state.items()})
            out[name.replace("model.safetensors", "pytorch_model.bin")] = pickled(state)
    return out


def pickles_only(files: dict[str, bytes]) -> dict[str, bytes]:
    """Every safetensors file replaced by its pickle (as Zeroscope's repo holds them)."""
    out = {}
    for name, data in files.items():
        if name.endswith(".safetensors"):
            name = name.replace("model.safetensors", "pytorch_model.bin") if "diffusion_" not in name \
                else name.replace(".safetensors", ".bin")
            data = pickled(load(data))
        out[name] = data
    return out


def stable_diffusion_repo(tiny: Path) -> dict[str, bytes]:
    from transformers import CLIPImageProcessor

    files = with_variants_and_pickles(folder_files(tiny / "image_decoder"))
    index = json.loads(files["model_index.json"])
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"])
    files["model_index.json"] = json.dumps(index).encode()
    files["feature_extractor/preprocessor_config.json"] = CLIPImageProcessor(crop_size=224).to_json_string().encode()
    files["safety_checker/config.json"] = b"{}"  # the server never loads these
    files["safety_checker/model.safetensors"] = save({"w": torch.zeros(64)})
    files["v1-5-pruned-emaonly.safetensors"] = save({"w": torch.zeros(64)})
    files["README.md"] = b"# Stable Diffusion v1.5\n"
    return files


def populate(hub, tiny: Path) -> None:
    """Fill `hub` with the release's repositories and ImageBind's URL."""
    base, delta = llama_repos(tiny)
    hub.add("ChocoWu/nextgpt_7b_tiva_v0", nextgpt_repo(tiny))
    hub.add("huggyllama/llama-7b", base)
    hub.add("lmsys/vicuna-7b-delta-v0", delta)
    hub.add("stable-diffusion-v1-5/stable-diffusion-v1-5", stable_diffusion_repo(tiny))
    hub.add("cvssp/audioldm-l-full", {**folder_files(tiny / "audio_decoder"), "README.md": b"# AudioLDM\n"})
    hub.add("cerspense/zeroscope_v2_576w", {**pickles_only(folder_files(tiny / "video_decoder")),
                                            "zs2_576w/text2video_pytorch_model.pth": pickled({"w": torch.zeros(8)})})
    imagebind = load_file(str(tiny / "imagebind" / "model.safetensors"))
    hub.urls["imagebind_huge.pth"] = pickled(dict(imagebind))
