"""The assembled release at its real sizes, as sparse files (headers only, no data on disk):
verify accepts it, catches a wrong shape at 7B, and the GPU-memory figures count what it holds."""
import json
import math
import shutil

import pytest
import torch

from models.signals import added_tokens
from weights.release import NEXTGPT_7B_TIVA_V0, RELEASE_PARAMS, release_config

LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}


def sparse_safetensors(path, shapes: dict, dtype="F16"):
    """A valid safetensors header and a hole where the data would be: real size, no disk used."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        nbytes = math.prod(shape) * (2 if dtype == "F16" else 4)
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)


def release_tokenizer(folder):
    """LLaMA's 32000-entry vocabulary size (not its pieces) plus NExT-GPT's 38 tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, 32000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_tokens(added_tokens())
    fast.save_pretrained(str(folder))
    return fast


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.checkpoint import release_targets
    from models.encoder import IMAGEBIND_HUGE, build_imagebind
    from models.llm import LanguageModel, LoraSettings
    from models.nextgpt import build_projections
    from weights.delta import target_shapes

    root = tmp_path_factory.mktemp("real") / "nextgpt-7b-tiva-v0"
    config = release_config()
    root.mkdir()
    config.save(root)
    llm = target_shapes(LLAMA_7B)
    keys = sorted(llm)
    weight_map = {k: f"model-0000{1 + (i >= len(keys) // 2)}-of-00002.safetensors" for i, k in enumerate(keys)}
    for shard in sorted(set(weight_map.values())):
        sparse_safetensors(root / "llm" / shard, {k: llm[k] for k in keys if weight_map[k] == shard})
    (root / "llm" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (root / "llm" / "config.json").write_text(json.dumps(LLAMA_7B))
    tokenizer = release_tokenizer(root / "nextgpt")
    with torch.device("meta"):
        lm = LanguageModel.from_base(tokenizer, LlamaForCausalLM(LlamaConfig(**LLAMA_7B)), 1024, LoraSettings())
        projections = build_projections(config, 4096)
    checkpoint = {k: tuple(v.shape) for k, v in release_targets(lm, dict(projections)).items()}
    sparse_safetensors(root / "nextgpt" / "pytorch_model.safetensors", checkpoint)
    towers = {k: tuple(v.shape) for k, v in build_imagebind(IMAGEBIND_HUGE, "meta").state_dict().items()}
    towers["modality_trunks.text.blocks.0.attn.in_proj_weight"] = (3072, 1024)  # unused tower: ignored
    sparse_safetensors(root / "imagebind" / "model.safetensors", towers, dtype="F32")
    (root / "imagebind" / "config.json").write_text(json.dumps(IMAGEBIND_HUGE))
    return root


def test_real_size_release_verifies(release_dir):
    from weights.verify import verify

    checks = verify(release_dir, ("llm",))
    assert [c.problems for c in checks] == [[]] * len(checks)
    on_disk = sum(p.stat().st_blocks * 512 for p in release_dir.rglob("*") if p.is_file())
    assert on_disk < 50e6  # sparse: the test costs no disk


def test_memory_figures_count_the_real_parameters(release_dir):
    from weights.inventory import gpu_memory, stage_params

    params = stage_params(release_dir)
    assert params == {"encoder": RELEASE_PARAMS["encoder"], "llm": RELEASE_PARAMS["llm"]}
    assert gpu_memory(RELEASE_PARAMS)["text"] == pytest.approx(15.18e9, rel=1e-3)


def test_wrong_shape_at_real_size_is_caught(release_dir, tmp_path):
    from transformers import LlamaConfig

    from weights.tensorfiles import read_header
    from weights.verify import check_checkpoint

    broken = tmp_path / "broken"  # only the checkpoint differs; copying sparse 7B files would fill them in
    shutil.copytree(release_dir / "nextgpt", broken / "nextgpt", ignore=shutil.ignore_patterns("*.safetensors"))
    shapes = {k: v.shape for k, v in read_header(release_dir / "nextgpt" / "pytorch_model.safetensors").items()}
    shapes["gen_text_hidden_fcs_video.0.model.weight"] = (768, 512)  # SD's width where Zeroscope's 1024 belongs
    sparse_safetensors(broken / "nextgpt" / "pytorch_model.safetensors", shapes)
    check = check_checkpoint(broken, release_config(), LlamaConfig(**LLAMA_7B))
    assert any("wrong shape gen_text_hidden_fcs_video.0.model.weight: expected [1024, 512]" in p for p in check.problems)


def test_release_config_has_the_reference_defaults():
    config = release_config()
    assert config.decoder_defaults["video"]["num_frames"] == 24 and config.decoder_defaults["image"]["height"] == 512
    assert config.projections["audio"].num_queries == 1 and config.media_dim == 1024 and config.lora.r == 32
    assert NEXTGPT_7B_TIVA_V0.components == config.components  # fetch places parts where the loader looks
