"""Placement planning on fake GPU inventories, and the memory estimates against the architectures."""
import pytest
import torch

from models.nextgpt import STAGES
from models.placement import (DECODERS, GIB, PARAMS, GpuInfo, Headroom, Placement, PlacementError, apply_offload,
                              detect_gpus, estimates, plan_placement)


def gpus(n: int, gib: float, name: str = "NVIDIA Test GPU") -> list[GpuInfo]:
    return [GpuInfo(index=i, name=name, total_bytes=int(gib * GIB)) for i in range(n)]


RTX_4090 = gpus(1, 23.99, "NVIDIA GeForce RTX 4090")  # what torch reports for a 24 GB card
H100 = gpus(1, 79.1, "NVIDIA H100 80GB HBM3")
A10G_X2 = gpus(2, 22.5, "NVIDIA A10G")
A100_X4 = gpus(4, 79.1, "NVIDIA A100-SXM4-80GB")
SMALL_8GB = gpus(1, 7.8, "NVIDIA GeForce RTX 3070")


def check_within_budget(plan: Placement) -> None:
    for g in plan.gpus:
        assert plan.planned_bytes(f"cuda:{g.index}") <= plan.budget(g), plan.describe()


def test_devices_cover_every_stage_for_from_pretrained():
    for inventory in ([], RTX_4090, H100, A10G_X2, A100_X4, SMALL_8GB):
        plan = plan_placement(inventory)
        assert set(plan.devices) == set(STAGES)
        assert all(d == "cpu" or d.startswith("cuda:") for d in plan.devices.values())


def test_no_gpu_runs_everything_on_cpu_in_fp32_with_a_warning():
    plan = plan_placement([])
    assert plan.mode == "cpu"
    assert set(plan.devices.values()) == {"cpu"}
    assert {p.dtype for p in plan.stages.values()} == {"float32"}
    assert plan.warnings and "no CUDA GPU" in plan.warnings[0]


def test_one_big_gpu_holds_everything_in_fp16():
    plan = plan_placement(H100)
    assert plan.mode == "single-gpu"
    assert set(plan.devices.values()) == {"cuda:0"}
    assert all(p.dtype == "float16" and p.quantize is None and p.offload is None for p in plan.stages.values())
    assert not plan.warnings
    check_within_budget(plan)


def test_a_24gb_gpu_quantizes_the_llm_and_offloads_the_decoders():
    plan = plan_placement(RTX_4090)
    assert plan.mode == "single-gpu-small"
    assert set(plan.devices.values()) == {"cuda:0"}
    assert plan.stages["llm"].quantize in ("int8", "int4")
    assert all(plan.stages[d].offload in ("model", "sequential") for d in DECODERS)
    assert plan.exclusive_groups() == {"cuda:0": ["video", "image", "audio"]}
    assert not plan.warnings
    check_within_budget(plan)


def test_two_24gb_gpus_give_the_llm_a_gpu_of_its_own():
    plan = plan_placement(A10G_X2)
    assert plan.mode == "multi-gpu"
    llm_device = plan.devices["llm"]
    assert all(plan.devices[s] != llm_device for s in STAGES if s != "llm")
    assert all(p.quantize is None and p.offload is None for p in plan.stages.values())
    check_within_budget(plan)


def test_four_80gb_gpus_spread_the_stages_biggest_first():
    plan = plan_placement(A100_X4)
    assert plan.devices["llm"] == "cuda:0"
    assert plan.devices["video"] == "cuda:1"  # the biggest decoder takes the next empty GPU
    assert {plan.devices[s] for s in DECODERS} == {"cuda:1", "cuda:2", "cuda:3"}
    assert plan.devices["encoder"] != "cuda:0"
    check_within_budget(plan)


def test_a_too_small_gpu_falls_back_to_cpu_with_a_warning():
    plan = plan_placement(SMALL_8GB)
    assert plan.mode == "partial-cpu"
    on_cpu = [s for s, d in plan.devices.items() if d == "cpu"]
    assert on_cpu and all(plan.stages[s].dtype == "float32" for s in on_cpu)
    assert len(plan.warnings) == len(on_cpu)
    assert all("runs on the CPU" in w for w in plan.warnings)
    check_within_budget(plan)


def test_a_too_small_gpu_without_fallback_is_a_clear_error():
    with pytest.raises(PlacementError, match="does not fit on the GPUs present.*RTX 3070.*needs about"):
        plan_placement(SMALL_8GB, cpu_fallback=False)


def test_a_smaller_headroom_fits_where_the_default_does_not():
    lean = Headroom(llm_streams=1, llm_context=1024, video_gib=3.0)
    plan = plan_placement(gpus(1, 15.0), headroom=lean)
    assert "cpu" not in plan.devices.values(), plan.describe()


def test_quantize_is_honoured_and_validated():
    plan = plan_placement(H100, quantize="4bit")
    assert plan.stages["llm"].quantize == "int4"
    assert plan.stages["llm"].gpu_bytes < plan_placement(H100).stages["llm"].gpu_bytes
    with pytest.raises(ValueError, match="quantize"):
        plan_placement(H100, quantize="int3")
    with pytest.raises(ValueError, match="budget_fraction"):
        plan_placement(H100, budget_fraction=1.5)


def test_without_bitsandbytes_the_llm_stays_fp16():
    plan = plan_placement(RTX_4090, can_quantize=False)
    assert plan.stages["llm"].quantize is None
    assert plan.warnings  # the 24 GB GPU no longer holds everything: some stage runs on the CPU, said so
    check_within_budget(plan)


def test_a_lower_budget_pushes_to_a_smaller_mode():
    assert plan_placement(gpus(1, 40.0)).mode == "single-gpu"
    assert plan_placement(gpus(1, 40.0), budget_fraction=0.5).mode == "single-gpu-small"


def test_describe_is_a_table_naming_gpus_stages_and_flags():
    text = plan_placement(RTX_4090).describe()
    assert "NVIDIA GeForce RTX 4090" in text and "int8" in text and "model" in text
    for stage in STAGES:
        assert f"\n  {stage} " in text
    assert plan_placement(RTX_4090).as_dict()["stages"]["llm"]["quantize"] == "int8"


def test_estimates_follow_the_release_sizes():
    est = estimates()
    llm = est["llm"]
    assert 12.5 * GIB < llm.weight_bytes() < 13.5 * GIB  # 6.87B parameters in fp16
    assert llm.weight_bytes("int8") < 0.55 * llm.weight_bytes() and llm.weight_bytes("int4") < llm.weight_bytes("int8")
    assert Headroom().llm_streams * Headroom().llm_context * 512 * 1024 == 4 * GIB  # 0.5 MiB of KV a token
    video = est["video"]
    assert video.gpu_bytes(offload="model") < video.gpu_bytes() and video.gpu_bytes(offload="sequential") < 6 * GIB


def test_parameter_counts_match_the_architectures():
    """PARAMS were counted from server/bench/gpu_arch.py's configs: count them again (meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet3DConditionModel
    from transformers import (ClapTextConfig, ClapTextModelWithProjection, CLIPTextConfig, CLIPTextModel,
                              SpeechT5HifiGan, SpeechT5HifiGanConfig)

    from models.encoder import IMAGEBIND_HUGE, build_imagebind
    from server.bench import gpu_arch as A

    def count(build):
        with torch.device("meta"):
            return A.param_count(build())

    assert count(lambda: UNet2DConditionModel(**A.SD15_UNET)) == PARAMS["sd15_unet"]
    assert count(lambda: AutoencoderKL(**A.SD_VAE)) == PARAMS["sd_vae"]
    assert count(lambda: CLIPTextModel(CLIPTextConfig(**A.SD15_TEXT))) == PARAMS["sd15_text"]
    assert count(lambda: UNet3DConditionModel(**A.ZEROSCOPE_UNET)) == PARAMS["zeroscope_unet"]
    assert count(lambda: CLIPTextModel(CLIPTextConfig(**A.OPENCLIP_H_TEXT))) == PARAMS["openclip_h_text"]
    assert count(lambda: UNet2DConditionModel(**A.AUDIOLDM_L_UNET)) == PARAMS["audioldm_l_unet"]
    assert count(lambda: AutoencoderKL(**A.AUDIOLDM_VAE)) == PARAMS["audioldm_vae"]
    assert count(lambda: ClapTextModelWithProjection(ClapTextConfig(**A.CLAP_TEXT))) == PARAMS["clap_text"]
    assert count(lambda: SpeechT5HifiGan(SpeechT5HifiGanConfig(**A.HIFIGAN_16K))) == PARAMS["hifigan"]
    assert A.param_count(build_imagebind(IMAGEBIND_HUGE, device="meta")) == PARAMS["imagebind_huge_vision_audio"]
    projections = sum(A.param_count(A.build_projection(m, 4096, device="meta")) for m in DECODERS)
    assert projections == PARAMS["output_projections"]
    c = A.LLAMA_7B  # LlamaForCausalLM, counted from its config (building it even on meta takes seconds)
    h, i, v, n = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    linear = n * (4 * h * h + 3 * h * i)
    assert linear == PARAMS["llama_7b_linear"]
    assert 2 * v * h + linear + n * 2 * h + h == PARAMS["llama_7b"]
    assert n * 4 * 32 * (h + h) == PARAMS["lora"]


def test_detect_gpus_reads_torch_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_gpus() == []

    class Props:
        name, total_memory = "NVIDIA H200", 150_000_000_000
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    assert detect_gpus() == [GpuInfo(0, "NVIDIA H200", 150_000_000_000), GpuInfo(1, "NVIDIA H200", 150_000_000_000)]


def test_apply_offload_calls_the_diffusers_method():
    calls = []

    class Pipe:
        def enable_model_cpu_offload(self, device):
            calls.append(("model", device))

        def enable_sequential_cpu_offload(self, device):
            calls.append(("sequential", device))

    apply_offload(Pipe(), "model", "cuda:1")
    apply_offload(Pipe(), "sequential", "cuda:0")
    assert calls == [("model", "cuda:1"), ("sequential", "cuda:0")]
    with pytest.raises(ValueError):
        apply_offload(Pipe(), "disk", "cuda:0")
