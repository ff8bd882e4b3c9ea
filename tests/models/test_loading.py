"""Loading with a placement: offloaded decoders, the quantized LLM path, one GPU slot per device."""
import copy
import dataclasses
import threading

import pytest
import torch
from diffusers import StableDiffusionPipeline

from models.decoders import Decoder, ImageParams
from models.generate import GenerationCancelled
from models.nextgpt import NextGPT
from models.placement import DECODERS, GIB, GpuInfo, Placement, StagePlan, plan_placement

SMALL_IMAGE = ImageParams(num_inference_steps=2, height=32, width=32)


def gpu_placement(llm_quantize=None, offload="model", device="cuda:0") -> Placement:
    """A plan for one GPU: the shape of what plan_placement gives a 24 GB card."""
    stages = {s: StagePlan(s, device, "float16") for s in ("llm", "encoder")}
    stages["llm"] = StagePlan("llm", device, "float16", quantize=llm_quantize)
    stages.update({m: StagePlan(m, device, "float16", offload=offload) for m in DECODERS})
    gpus = (GpuInfo(int(device.split(":")[1]), "NVIDIA Test GPU", 24 * GIB),)
    return Placement(stages, gpus, 0.9, "single-gpu-small")


def detached(model: NextGPT) -> dict[str, Decoder]:
    """Copies of the shared tiny model's decoders, so a test may set their locks."""
    return {m: copy.copy(d) for m, d in model.decoders.items()}


# --- Decoder(offload=...) --------------------------------------------------------------------------
@pytest.mark.parametrize("offload, method", [("model", "enable_model_cpu_offload"),
                                             ("sequential", "enable_sequential_cpu_offload")])
def test_an_offloaded_decoder_is_never_moved(tiny_dir, monkeypatch, offload, method):
    calls = []

    def refuse_to(self, *args, **kwargs):
        raise AssertionError(f"an offloaded pipeline must not be moved with .to{args}")

    monkeypatch.setattr(StableDiffusionPipeline, method, lambda self, device: calls.append((method, device)))
    monkeypatch.setattr(StableDiffusionPipeline, "to", refuse_to)
    decoder = Decoder.from_pretrained("image", tiny_dir / "image_decoder", SMALL_IMAGE, "cpu", torch.float32,
                                      offload=offload)
    assert calls == [(method, "cpu")]
    assert decoder.offload == offload and decoder.device == torch.device("cpu")
    image = decoder(torch.zeros(1, 77, 32), SMALL_IMAGE, [0])[0]  # the weights stayed where they were: CPU
    assert image.size == (32, 32)


def test_a_model_offloaded_decoder_frees_the_gpu_after_every_call(tiny_model, monkeypatch):
    decoder = copy.copy(tiny_model.decoders["image"])
    decoder.offload = "model"
    freed = []
    monkeypatch.setattr(decoder.pipe, "maybe_free_model_hooks", lambda: freed.append(1), raising=False)
    decoder(torch.zeros(1, 77, 32), SMALL_IMAGE, [0])
    after_call = len(freed)
    assert after_call >= 1  # Stable Diffusion frees its hooks itself at the end; AudioLDM does not
    with pytest.raises(GenerationCancelled):  # cancelled mid-way: the UNet must not stay on the GPU
        decoder(torch.zeros(1, 77, 32), SMALL_IMAGE, [0], should_stop=lambda: True)
    assert len(freed) == after_call + 1


# --- from_pretrained(placement=...) ----------------------------------------------------------------
def test_a_cpu_placement_loads_what_the_plain_cpu_load_does(tiny_dir, tiny_model):
    placement = plan_placement([])
    model = NextGPT.from_pretrained(tiny_dir, placement=placement)
    assert model.placement is placement and model.device_locks == {}
    assert set(model.decoders) == set(tiny_model.decoders)
    ours, theirs = model.llm.state_dict(), tiny_model.llm.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert value.device.type == "cpu" and value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), key
    for m, proj in model.projections.items():
        assert all(torch.equal(a, b) for a, b in zip(proj.state_dict().values(),
                                                     tiny_model.projections[m].state_dict().values()))
    for m, decoder in model.decoders.items():
        assert decoder.offload is None and decoder.lock is None and decoder.device == torch.device("cpu")
        assert torch.equal(decoder.negative, tiny_model.decoders[m].negative)
    assert tiny_model.placement is None and tiny_model.device_locks == {}


def test_a_quantized_llm_plan_loads_through_bitsandbytes_settings(tiny_dir, monkeypatch):
    """The quantized path on the CPU, bitsandbytes faked: its config and device map reach transformers,
    the checkpoint still loads, and the model is not cast afterwards."""
    import transformers

    from models import loading

    seen = {}
    real = transformers.LlamaForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, path, **kwargs):
        seen.update(kwargs)
        kwargs.pop("quantization_config"), kwargs.pop("device_map")
        return real(cls, path, **kwargs)

    monkeypatch.setattr(loading, "bnb_config", lambda q: f"bnb:{q}")
    monkeypatch.setattr(transformers.LlamaForCausalLM, "from_pretrained", classmethod(from_pretrained))
    config = loading.ModelConfig.load(tiny_dir)
    plan = StagePlan("llm", "cpu", "float16", quantize="int8")
    llm, _ = loading.load_language(tiny_dir, config, "cpu", plan)
    assert seen == {"dtype": torch.float16, "quantization_config": "bnb:int8", "device_map": {"": "cpu"}}
    assert llm.dtype == torch.float16 and llm.lm.lm_head.weight.dtype == torch.float16
    assert not llm.training


def test_offload_plans_reach_the_decoders(tiny_dir, monkeypatch):
    from models import loading

    seen = {}

    def fake(modality, path, defaults, device, dtype, offload=None):
        seen[modality] = (device, dtype, offload)
        return modality

    monkeypatch.setattr(loading.Decoder, "from_pretrained", staticmethod(fake))
    plan = gpu_placement(offload="model", device="cuda:1")
    config = loading.ModelConfig.load(tiny_dir)
    loading.load_decoders(tiny_dir, config, loading.stage_devices(plan.devices), plan.stages)
    assert seen == {m: ("cuda:1", torch.float16, "model") for m in DECODERS}
    seen.clear()
    loading.load_decoders(tiny_dir, config, loading.stage_devices("cpu"), {})
    assert seen == {m: ("cpu", torch.float32, None) for m in DECODERS}


# --- one GPU slot: offloaded decoders on one device take turns --------------------------------------
def test_offloaded_decoders_on_one_gpu_share_one_lock(tiny_model):
    m = tiny_model
    model = NextGPT(m.config, m.encoder, m.llm, m.projections, detached(m), m.limits, gpu_placement())
    assert set(model.device_locks) == {"cuda:0"}
    lock = model.device_locks["cuda:0"]
    assert all(model.decoders[d].lock is lock for d in DECODERS)
    resident = dataclasses.replace(gpu_placement(), stages={**gpu_placement().stages,
                                                            "image": StagePlan("image", "cuda:0", "float16")})
    model = NextGPT(m.config, m.encoder, m.llm, m.projections, detached(m), m.limits, resident)
    assert model.decoders["image"].lock is None and model.decoders["video"].lock is model.device_locks["cuda:0"]
    assert all(d.lock is None for d in m.decoders.values())  # the shared model is untouched


@pytest.mark.parametrize("batched", [False, True])
def test_decode_waits_for_the_gpu_slot_batched_or_not(tiny_model, batched):
    m = tiny_model
    model = NextGPT(m.config, m.encoder, m.llm, m.projections, detached(m), m.limits, gpu_placement())
    if batched:
        model.enable_batching(4)
    condition = torch.zeros(1, 77, 32)
    lock = model.device_locks["cuda:0"]
    done = threading.Event()
    lock.acquire()  # another offloaded decoder is drawing on this GPU
    worker = threading.Thread(target=lambda: (model.decode("image", condition, SMALL_IMAGE, 0), done.set()))
    worker.start()
    assert not done.wait(1.0)  # it waits for the slot
    lock.release()
    assert done.wait(60)
    worker.join()
    lock.acquire()  # a request stopped while it waits gives up at once
    stop = threading.Event()
    errors = []

    def stopped_call():
        try:
            model.decode("image", condition, SMALL_IMAGE, 0, should_stop=stop.is_set)
        except GenerationCancelled as e:
            errors.append(e)

    worker = threading.Thread(target=stopped_call)
    worker.start()
    stop.set()
    worker.join(10)
    assert not worker.is_alive() and len(errors) == 1
    lock.release()
    for batcher in model.batchers.values():
        batcher.close()


# --- GPU ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_the_llm_loads_in_8bit_with_offloaded_decoders_on_a_gpu(tiny_dir):
    """The release's layout (tiny sizes): bitsandbytes quantizes the decoder layers' Linears, leaves
    embed_tokens, lm_head and llama_proj in fp16, LoRA sits on the 8-bit layers, and a whole turn runs."""
    pytest.importorskip("bitsandbytes")
    from models.generate import SamplingParams
    from models.types import Message

    model = NextGPT.from_pretrained(tiny_dir, placement=gpu_placement(llm_quantize="int8"))
    attn = model.llm.lm.model.layers[0].self_attn
    assert "default" in attn.q_proj.lora_A  # peft's LoRA wrapper around the 8-bit layer
    assert type(attn.q_proj.base_layer).__name__ == "Linear8bitLt"
    assert attn.q_proj.base_layer.weight.dtype == torch.int8
    for weight in (model.llm.lm.lm_head.weight, model.llm.lm.model.embed_tokens.weight, model.llm.llama_proj.weight):
        assert weight.dtype == torch.float16 and weight.device.type == "cuda"
    assert all(d.offload == "model" and d.lock is model.device_locks["cuda:0"] for d in model.decoders.values())
    # what serving skips on a quantized LLM: the LoRA merge, the compiled static path, the offloaded decoders' compile
    assert model.llm.quantized and not model.merge_lora()
    model.enable_llm_batching(2)
    assert model.llm_batcher._solo is None and model.accelerate_decoders() == []
    model.close()
    out = model.chat([Message("user", "draw")], required=["image", "audio"],
                     sampling=SamplingParams(max_new_tokens=4, seed=0),
                     decoder_params={"image": {"num_inference_steps": 2}, "audio": {"num_inference_steps": 2}})
    assert out.image.size == (32, 32) and out.audio is not None
    unet = model.decoders["image"].pipe.unet
    assert next(unet.parameters()).device.type == "cpu"  # offloaded again after the call
