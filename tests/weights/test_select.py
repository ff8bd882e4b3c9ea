"""Choosing the files the server needs from a repository listing."""
from weights.select import canonical_name, pick_weights, select_diffusers, select_transformers

SD_LISTING = [
    "model_index.json", "README.md", "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.non_ema.bin", "unet/diffusion_flax_model.msgpack",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin", "tokenizer/vocab.json", "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json",
    "safety_checker/config.json", "safety_checker/model.safetensors", "feature_extractor/preprocessor_config.json",
    "vae/config.json", "vae/diffusion_pytorch_model.bin",
]
SD_INDEX = {"_class_name": "StableDiffusionPipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"], "image_encoder": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


def test_diffusers_selection_takes_one_copy_of_each_component():
    chosen = select_diffusers(SD_LISTING, SD_INDEX, skip=("safety_checker",))
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in chosen
    assert "text_encoder/model.fp16.safetensors" in chosen
    assert "vae/diffusion_pytorch_model.bin" in chosen  # the only copy there is
    assert {"tokenizer/vocab.json", "tokenizer/merges.txt", "feature_extractor/preprocessor_config.json"} <= set(chosen)
    for unwanted in ("README.md", "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt", "safety_checker/config.json",
                     "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
                     "unet/diffusion_pytorch_model.non_ema.bin", "unet/diffusion_flax_model.msgpack"):
        assert unwanted not in chosen


def test_sharded_weights_need_their_index():
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert pick_weights(shards + ["model.safetensors.index.json"]) == shards + ["model.safetensors.index.json"]
    bins = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"]
    assert pick_weights(shards + bins) == bins  # safetensors shards without their index are unusable
    assert pick_weights(["config.json"]) == []


def test_transformers_selection_skips_the_tokenizer():
    listing = ["config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json", "README.md",
               "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"]
    assert select_transformers(listing) == ["config.json", "generation_config.json", *listing[5:]]


def test_canonical_names_drop_the_variant():
    assert canonical_name("diffusion_pytorch_model.fp16.safetensors") == "diffusion_pytorch_model.safetensors"
    assert canonical_name("model.fp16-00001-of-00002.safetensors") == "model-00001-of-00002.safetensors"
    assert canonical_name("model.safetensors.index.fp16.json") == "model.safetensors.index.json"
    assert canonical_name("config.json") == "config.json"
