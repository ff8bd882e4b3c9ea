"""The release checkpoint loader: every key accounted for both ways, real-size shapes on meta."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import CHECKPOINT_FILE, CheckpointMismatch, load_release_checkpoint, release_targets
from models.config import RELEASE_PROJECTIONS, ModelConfig
from models.nextgpt import NextGPT, build_projections


def fresh_targets(tiny_dir):
    """An unloaded model of the tiny architecture, to load the checkpoint into."""
    from models.llm import LanguageModel, LoraSettings

    config = ModelConfig.load(tiny_dir)
    lora = LoraSettings(r=config.lora.r, alpha=config.lora.alpha)
    llm = LanguageModel.from_pretrained(tiny_dir / "llm", tiny_dir / "nextgpt", config.media_dim, lora)
    return llm, dict(build_projections(config, llm.lm.config.hidden_size))


@pytest.fixture()
def release_file(tiny_dir, tmp_path):
    state = load_file(str(tiny_dir / "nextgpt" / CHECKPOINT_FILE))
    return state, tmp_path / CHECKPOINT_FILE


def test_good_file_loads_every_key(tiny_dir, release_file):
    state, path = release_file
    save_file(state, str(path))
    llm, projections = fresh_targets(tiny_dir)
    report = load_release_checkpoint(path, llm, projections)
    assert report.ok
    targets = release_targets(llm, projections)
    for key, value in state.items():
        assert torch.equal(targets[key].detach().half(), value), key


def test_release_key_names(tiny_dir, release_file):
    keys = set(release_file[0])
    assert "llama_model.base_model.model.model.embed_tokens.weight" in keys
    assert "llama_model.base_model.model.lm_head.weight" in keys
    assert "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in keys
    assert {"llama_proj.weight", "llama_proj.bias"} <= keys
    for prefix in ("gen_text_hidden_fcs.0.", "gen_text_hidden_fcs_video.0.", "gen_text_hidden_fcs_audio.0."):
        assert {prefix + "query_embs", prefix + "fc.weight", prefix + "model.weight",
                prefix + "tfm.encoder.norm.weight", prefix + "tfm.decoder.norm.weight"} <= keys
    assert not any("base_layer" in k for k in keys)  # frozen base weights are not in the release


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_mismatch_is_listed(tiny_dir, release_file, damage):
    state, path = release_file
    victim = "gen_text_hidden_fcs_audio.0.query_embs"
    if damage == "missing":
        del state[victim]
    elif damage == "extra":
        state["gen_text_hidden_fcs.1.fc.weight"] = torch.zeros(2, 2)
    else:
        state[victim] = torch.zeros(1, 2, state[victim].shape[-1])
    save_file(state, str(path))
    llm, projections = fresh_targets(tiny_dir)
    with pytest.raises(CheckpointMismatch) as err:
        load_release_checkpoint(path, llm, projections)
    report = err.value.report
    if damage == "missing":
        assert report.missing == [victim] and not report.unexpected
    elif damage == "extra":
        assert report.unexpected == ["gen_text_hidden_fcs.1.fc.weight"] and not report.missing
    else:
        assert report.misshaped[0][0] == victim and "wrong shape" in str(err.value)


def test_real_size_model_matches_release_shapes_on_meta():
    """Vicuna-7B + LoRA r=32 + the three projections, built on meta: the release's keys, 1:1."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    from models.output_proj import OutputProjection, OutputProjectionConfig

    with torch.device("meta"):
        base = LlamaForCausalLM(LlamaConfig(vocab_size=32038, hidden_size=4096, intermediate_size=11008,
                                            num_hidden_layers=32, num_attention_heads=32, tie_word_embeddings=False))
        peft = get_peft_model(base, LoraConfig(r=32, lora_alpha=32, lora_dropout=0.1,
                                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        proj = {m: OutputProjection(OutputProjectionConfig(in_dim=4096, **s.model_dump()))
                for m, s in RELEASE_PROJECTIONS.items()}
        llama_proj = torch.nn.Linear(1024, 4096)

    class LLM:  # the two attributes release_targets reads
        llama_model = peft

    LLM.llama_proj = llama_proj
    shapes = {k: tuple(v.shape) for k, v in release_targets(LLM, proj).items()}
    assert shapes["llama_model.base_model.model.model.embed_tokens.weight"] == (32038, 4096)
    assert shapes["llama_model.base_model.model.lm_head.weight"] == (32038, 4096)
    assert shapes["llama_model.base_model.model.model.layers.31.self_attn.o_proj.lora_A.default.weight"] == (32, 4096)
    assert shapes["llama_model.base_model.model.model.layers.31.self_attn.o_proj.lora_B.default.weight"] == (4096, 32)
    assert shapes["llama_proj.weight"] == (4096, 1024)
    assert shapes["gen_text_hidden_fcs.0.query_embs"] == (1, 77, 512)
    assert shapes["gen_text_hidden_fcs.0.model.weight"] == (768, 512)
    assert shapes["gen_text_hidden_fcs_video.0.model.weight"] == (1024, 512)
    assert shapes["gen_text_hidden_fcs_audio.0.query_embs"] == (1, 1, 512)
    assert shapes["gen_text_hidden_fcs_audio.0.fc.weight"] == (512, 4096)
    lora = [k for k in shapes if ".lora_" in k]
    assert len(lora) == 32 * 4 * 2
    n_params = sum(torch.Size(s).numel() for s in shapes.values())
    assert 380e6 < n_params < 410e6  # NEXTGPT.md: about 395M trained parameters in the release
