"""Which stage runs where: a placement plan from the GPUs present and a memory budget.

`plan_placement(detect_gpus())` is a pure function of the GPU inventory; its `Placement.devices`
is what `NextGPT.from_pretrained(path, devices=...)` takes, and each `StagePlan` says whether the
LLM is quantized (bitsandbytes through transformers' BitsAndBytesConfig) and whether a decoder
runs with diffusers' CPU offload. Preference order, fastest first:

1. every stage resident in fp16 (one big GPU, or spread over several: biggest stage first, the LLM
   alone on a GPU where the others fit elsewhere);
2. the LLM resident in fp16, decoders with model CPU offload (one decoder on the GPU at a time);
3. the LLM in 8-bit, then 4-bit, decoders resident, then model-offloaded, then sequentially
   offloaded (the single 24 GB GPU lands here: 8-bit LLM, model-offloaded decoders);
4. what still does not fit runs on the CPU, with a warning (or PlacementError if not allowed).

Memory estimates are computed from parameter counts of the released architectures (fp16, 2 bytes
a parameter) plus working memory (activations, KV cache); see PARAMS and Headroom.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024 ** 3
STAGE_ORDER = ("llm", "video", "image", "audio", "encoder")  # biggest first (fp16 weights + working memory)
DECODERS = ("image", "audio", "video")
QUANT_ALIASES = {"int8": "int8", "8bit": "int8", "int4": "int4", "4bit": "int4", "nf4": "int4"}

# Parameter counts of the released architectures, counted on the meta device from the configs in
# server/bench/gpu_arch.py (tests/models/test_placement.py counts them again and compares).
PARAMS = {
    "llama_7b": 6_738_726_912,  # LLaMA-1 7B layout with the release's 32038-token vocabulary
    "llama_7b_linear": 6_476_005_376,  # the decoder layers' Linear weights: what bitsandbytes quantizes
    "lora": 33_554_432,  # r=32 on q,k,v,o of 32 layers: 32 * 4 * 32 * (4096 + 4096)
    "llama_proj": 4_198_400,  # Linear(1024, 4096)
    "output_projections": 95_837_440,  # the three fc + nn.Transformer(512) + Linear(512, D) + queries
    "imagebind_huge_vision_audio": 719_065_088,  # vision (632.8M) + audio (86.2M) towers, heads included
    "sd15_unet": 859_520_964, "sd_vae": 83_653_863, "sd15_text": 123_060_480,
    "zeroscope_unet": 1_411_233_860, "openclip_h_text": 340_387_840,
    "audioldm_l_unet": 739_139_080, "audioldm_vae": 55_376_873, "clap_text": 125_302_016, "hifigan": 55_264_897,
}
# Bytes a quantized Linear parameter takes: LLM.int8 keeps one int8 per weight (+ a fp32 scale per
# row); NF4 with double quantisation keeps 4 bits + one 8-bit absmax per 64 weights.
QUANT_BYTES = {None: 2.0, "int8": 1.0, "int4": 0.5 + 1 / 64}
SEQUENTIAL_OFFLOAD_WEIGHTS = 0.25 * GIB  # enable_sequential_cpu_offload streams one layer at a time
KV_BYTES_PER_TOKEN = 2 * 32 * 4096 * 2  # K and V, 32 layers, hidden 4096, fp16


@dataclass(frozen=True)
class GpuInfo:
    index: int  # CUDA ordinal, as in "cuda:{index}"
    name: str
    total_bytes: int  # torch.cuda.get_device_properties(i).total_memory


@dataclass(frozen=True)
class Headroom:
    """Working memory beyond the weights at the release's defaults, one request at a time (batch 1).
    The decoder figures are estimates to calibrate with `python -m server.bench.gpu` (it records the
    peak memory of each pipeline); Zeroscope's model card reports 7.9 GB for 30 frames at 576x320."""

    llm_streams: int = 4  # concurrent generations whose KV caches must fit at once
    llm_context: int = 2048  # tokens per stream: LLaMA-1's max_position_embeddings
    # a lone request's static KV cache (models/solo_decode.py, an unquantized LLM on a GPU):
    # allocated at the first request, for the whole context, and kept (a quantized LLM has none:
    # there it is a margin)
    llm_static_streams: int = 1
    llm_workspace_gib: float = 0.5  # prefill activations of a 2048-token prompt, cuBLAS workspace
    encoder_gib: float = 0.5  # ImageBind on a video: 15 clips x 257 tokens x 1280
    image_gib: float = 1.5  # SD 1.5 UNet at 64x64 latents, CFG batch 2, VAE decode at 512x512
    audio_gib: float = 1.0  # AudioLDM 9 s: 225x16 latents, VAE to a 900x64 mel, HiFi-GAN to 144k samples
    video_gib: float = 4.5  # Zeroscope 24x320x576: UNet3D on 48 frames of 40x72, VAE decode of 24 frames


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    what: str
    params: int  # every parameter, held in fp16 on a GPU
    largest_component: int  # the biggest sub-model: what model CPU offload moves onto the GPU at once
    working_bytes: int  # activations, KV cache and workspace (Headroom)
    quantizable: int = 0  # Linear weights bitsandbytes would quantize (LLM only)

    def weight_bytes(self, quantize: str | None = None) -> int:
        rest = self.params - self.quantizable
        return int(rest * 2 + self.quantizable * QUANT_BYTES[quantize])

    def gpu_bytes(self, quantize: str | None = None, offload: str | None = None) -> int:
        """Peak bytes on the GPU for this way of running the stage."""
        if offload == "model":
            return int(self.largest_component * 2 + self.working_bytes)
        if offload == "sequential":
            return int(SEQUENTIAL_OFFLOAD_WEIGHTS + self.working_bytes)
        return self.weight_bytes(quantize) + self.working_bytes


def estimates(headroom: Headroom = Headroom()) -> dict[str, StageEstimate]:
    p = PARAMS
    kv = (headroom.llm_streams + headroom.llm_static_streams) * headroom.llm_context * KV_BYTES_PER_TOKEN
    llm_params = p["llama_7b"] + p["lora"] + p["llama_proj"] + p["output_projections"]
    return {
        "llm": StageEstimate("llm", "Vicuna-7B v0 + LoRA r32 + input/output projections", llm_params,
                             llm_params, kv + int(headroom.llm_workspace_gib * GIB), p["llama_7b_linear"]),
        "encoder": StageEstimate("encoder", "ImageBind-huge, vision + audio towers",
                                 p["imagebind_huge_vision_audio"], p["imagebind_huge_vision_audio"],
                                 int(headroom.encoder_gib * GIB)),
        "image": StageEstimate("image", "Stable Diffusion 1.5: UNet + VAE + CLIP-L text",
                               p["sd15_unet"] + p["sd_vae"] + p["sd15_text"], p["sd15_unet"],
                               int(headroom.image_gib * GIB)),
        "audio": StageEstimate("audio", "AudioLDM-l-full: UNet + VAE + CLAP text + HiFi-GAN",
                               p["audioldm_l_unet"] + p["audioldm_vae"] + p["clap_text"] + p["hifigan"],
                               p["audioldm_l_unet"], int(headroom.audio_gib * GIB)),
        "video": StageEstimate("video", "Zeroscope v2 576w: UNet3D + SD VAE + OpenCLIP-H text",
                               p["zeroscope_unet"] + p["sd_vae"] + p["openclip_h_text"], p["zeroscope_unet"],
                               int(headroom.video_gib * GIB)),
    }


@dataclass(frozen=True)
class StagePlan:
    stage: str
    device: str  # "cuda:N" or "cpu"; with offload, the device the pipeline computes on
    dtype: str  # "float16" on a GPU, "float32" on the CPU (compute dtype when quantized)
    quantize: str | None = None  # "int8" | "int4": load the LLM through BitsAndBytesConfig
    offload: str | None = None  # "model" | "sequential": diffusers enable_*_cpu_offload
    gpu_bytes: int = 0  # estimated peak on its GPU
    what: str = ""


class PlacementError(RuntimeError):
    """No placement fits and CPU fallback was not allowed; the message says what is missing."""


@dataclass(frozen=True)
class Placement:
    stages: dict[str, StagePlan]
    gpus: tuple[GpuInfo, ...] = ()
    budget_fraction: float = 0.9
    mode: str = "cpu"  # cpu | single-gpu | single-gpu-small | multi-gpu | partial-cpu
    warnings: tuple[str, ...] = field(default=())

    @property
    def devices(self) -> dict[str, str]:
        """{stage: device} for NextGPT.from_pretrained(path, devices=...)."""
        return {s: p.device for s, p in self.stages.items()}

    def planned_bytes(self, device: str) -> int:
        """Estimated peak on `device`: resident stages add up; offloaded decoders share one slot
        (they must run one at a time: see `exclusive_groups`)."""
        here = [p for p in self.stages.values() if p.device == device]
        resident = sum(p.gpu_bytes for p in here if not p.offload)
        return resident + max((p.gpu_bytes for p in here if p.offload), default=0)

    def exclusive_groups(self) -> dict[str, list[str]]:
        """{device: offloaded stages} that share that GPU's offload slot: hold one lock per device
        around their pipeline calls so two of them never load onto the GPU at once."""
        groups: dict[str, list[str]] = {}
        for s in STAGE_ORDER:
            plan = self.stages[s]
            if plan.offload and plan.device != "cpu":
                groups.setdefault(plan.device, []).append(s)
        return groups

    def as_dict(self) -> dict:
        return {"mode": self.mode, "budget_fraction": self.budget_fraction, "warnings": list(self.warnings),
                "gpus": [{"index": g.index, "name": g.name, "total_bytes": g.total_bytes} for g in self.gpus],
                "stages": {s: {"device": p.device, "dtype": p.dtype, "quantize": p.quantize, "offload": p.offload,
                               "gpu_bytes": p.gpu_bytes} for s, p in self.stages.items()}}

    def describe(self) -> str:
        """The start-up table: GPUs, then one row per stage, then warnings."""
        budget = f"budget {self.budget_fraction:.0%} of each GPU's memory" if self.gpus else "no CUDA GPU"
        lines = [f"placement: {self.mode} ({budget})"]
        for g in self.gpus:
            device = f"cuda:{g.index}"
            lines.append(f"  {device:<7} {g.name:<28} {_gib(g.total_bytes):>9} total {_gib(self.budget(g)):>9}"
                         f" budget {_gib(self.planned_bytes(device)):>9} planned")
        lines.append(f"  {'stage':<8} {'device':<7} {'dtype':<8} {'weights':<8} {'offload':<10} {'est. GPU':>9}  what")
        for s in STAGE_ORDER:
            p = self.stages[s]
            weights = p.quantize or ("fp16" if p.device != "cpu" else "fp32")
            est = _gib(p.gpu_bytes) if p.device != "cpu" else "-"
            lines.append(f"  {s:<8} {p.device:<7} {p.dtype:<8} {weights:<8} {p.offload or '-':<10} {est:>9}  {p.what}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def budget(self, gpu: GpuInfo) -> int:
        return int(gpu.total_bytes * self.budget_fraction)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def detect_gpus() -> list[GpuInfo]:
    """The CUDA GPUs this process sees (CUDA_VISIBLE_DEVICES applies); [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(GpuInfo(index=i, name=props.name, total_bytes=int(props.total_memory)))
    return gpus


# --- planning ---------------------------------------------------------------------------------------
@dataclass
class _Gpu:
    info: GpuInfo
    budget: int
    resident: int = 0
    slot: int = 0  # the shared offload slot: the largest offloaded stage's peak
    reserved: bool = False  # holds the LLM: other stages go here only if nowhere else fits

    @property
    def device(self) -> str:
        return f"cuda:{self.info.index}"

    def cost(self, nbytes: int, offload: str | None) -> int:
        return max(0, nbytes - self.slot) if offload else nbytes

    def free_after(self, nbytes: int, offload: str | None) -> int:
        return self.budget - self.resident - self.slot - self.cost(nbytes, offload)

    def take(self, nbytes: int, offload: str | None) -> None:
        if offload:
            self.slot = max(self.slot, nbytes)
        else:
            self.resident += nbytes


@dataclass(frozen=True)
class _Option:
    quantize: str | None = None
    offload: str | None = None
    cpu: bool = False


def _choose(gpus: list[_Gpu], nbytes: int, offload: str | None) -> _Gpu | None:
    """Spread: the GPU with the most memory left afterwards, GPUs holding the LLM last."""
    fitting = [g for g in gpus if g.free_after(nbytes, offload) >= 0]
    if not fitting:
        return None
    return max(fitting, key=lambda g: (not g.reserved, g.free_after(nbytes, offload), -g.info.index))


def _pack(gpus: list[_Gpu], options: dict[str, list[_Option]], est: dict[str, StageEstimate]):
    """Greedy, biggest stage first: each stage takes its first option that fits somewhere."""
    chosen: dict[str, tuple[_Gpu | None, _Option]] = {}
    for stage in STAGE_ORDER:
        for opt in options[stage]:
            if opt.cpu:
                chosen[stage] = (None, opt)
                break
            nbytes = est[stage].gpu_bytes(opt.quantize, opt.offload)
            gpu = _choose(gpus, nbytes, opt.offload)
            if gpu is not None:
                gpu.take(nbytes, opt.offload)
                gpu.reserved |= stage == "llm" and len(gpus) > 1
                chosen[stage] = (gpu, opt)
                break
        else:
            return None
    return chosen


def _llm_modes(quantize: str | None, can_quantize: bool) -> list[str | None]:
    if quantize is not None:
        return [quantize]
    return [None, "int8", "int4"] if can_quantize else [None]


def _tiers(llm_modes: list[str | None]) -> list[tuple[str | None, str | None]]:
    """(LLM quantisation, decoder offload) pairs, fastest first. Model offload beats an 8-bit LLM:
    it costs one host-to-GPU copy per decoder call, while LLM.int8 slows every generated token."""
    tiers = [(q, offload) for q in llm_modes for offload in (None, "model")]
    return tiers + [(llm_modes[-1], "sequential")]


def _tier_options(llm_q: str | None, offload: str | None) -> dict[str, list[_Option]]:
    options = {s: [_Option(offload=offload)] for s in DECODERS}
    options.update(llm=[_Option(quantize=llm_q)], encoder=[_Option()])
    return options


# How much a stage on the CPU hurts: the LLM serves every request, token by token; Zeroscope on a
# CPU takes many minutes, SD about one, AudioLDM less; ImageBind on a CPU costs about a second.
CPU_PENALTY = {"llm": 100, "video": 10, "image": 5, "audio": 3, "encoder": 1}


def _fallback(gpus: list[GpuInfo], fraction: float, llm_modes: list[str | None], est):
    """Some stages on the CPU: of the (LLM format, decoder offload) pairs, the one whose CPU
    stages hurt least (CPU_PENALTY; the faster pair on a tie)."""
    best = None
    for llm_q, offload in ((q, o) for q in llm_modes for o in (None, "model", "sequential")):
        options = {s: [_Option(offload=offload), _Option(cpu=True)] for s in DECODERS}
        options.update(llm=[_Option(quantize=llm_q), _Option(cpu=True)], encoder=[_Option(), _Option(cpu=True)])
        chosen = _pack(_new_gpus(gpus, fraction), options, est)
        on_cpu = sum(CPU_PENALTY[stage] for stage, (gpu, _) in chosen.items() if gpu is None)
        if best is None or on_cpu < best[0]:
            best = (on_cpu, chosen)
    return best[1]


def plan_placement(gpus: list[GpuInfo], budget_fraction: float = 0.9, quantize: str | None = None, *,
                   headroom: Headroom = Headroom(), cpu_fallback: bool = True,
                   can_quantize: bool = True) -> Placement:
    """A placement of every stage over `gpus`, each GPU filled to at most budget_fraction of its
    memory. `quantize` ("int8"/"int4") forces the LLM's weights; None lets the plan decide, among
    fp16, int8 and int4 unless `can_quantize` is False (bitsandbytes missing: see
    bitsandbytes_available)."""
    if not 0 < budget_fraction <= 1:
        raise ValueError(f"budget_fraction must be in (0, 1], got {budget_fraction}")
    if quantize is not None and quantize not in QUANT_ALIASES:
        raise ValueError(f"quantize must be None, 'int8' or 'int4', got {quantize!r}")
    quantize = QUANT_ALIASES.get(quantize) if quantize else None
    est = estimates(headroom)
    if not gpus:
        stages = {s: StagePlan(s, "cpu", "float32", what=est[s].what) for s in STAGE_ORDER}
        host = sum(e.params for e in est.values()) * 4
        warning = (f"no CUDA GPU: every stage runs on the CPU in float32 (about {_gib(host)} of host memory "
                   f"for the weights; minutes per image at the release's size)")
        return Placement(stages, (), budget_fraction, "cpu", (warning,))
    llm_modes = _llm_modes(quantize, can_quantize)
    for llm_q, offload in _tiers(llm_modes):
        chosen = _pack(_new_gpus(gpus, budget_fraction), _tier_options(llm_q, offload), est)
        if chosen is not None:
            return _placement(chosen, est, gpus, budget_fraction, ())
    if not cpu_fallback:
        raise PlacementError(_no_fit_message(gpus, budget_fraction, est, quantize))
    chosen = _fallback(gpus, budget_fraction, llm_modes, est)
    return _placement(chosen, est, gpus, budget_fraction, _cpu_warnings(chosen, est, gpus, budget_fraction))


def _new_gpus(gpus: list[GpuInfo], fraction: float) -> list[_Gpu]:
    return [_Gpu(g, int(g.total_bytes * fraction)) for g in gpus]


def _placement(chosen, est, gpus, fraction, warnings) -> Placement:
    stages = {}
    for stage in STAGE_ORDER:
        gpu, opt = chosen[stage]
        if gpu is None:
            stages[stage] = StagePlan(stage, "cpu", "float32", what=est[stage].what)
        else:
            stages[stage] = StagePlan(stage, gpu.device, "float16", opt.quantize, opt.offload,
                                      est[stage].gpu_bytes(opt.quantize, opt.offload), est[stage].what)
    plans = stages.values()
    if any(p.device == "cpu" for p in plans):
        mode = "partial-cpu"
    elif len({p.device for p in plans}) > 1:
        mode = "multi-gpu"
    else:
        mode = "single-gpu-small" if any(p.quantize or p.offload for p in plans) else "single-gpu"
    return Placement(stages, tuple(gpus), fraction, mode, tuple(warnings))


def _smallest(stage: str, est: dict[str, StageEstimate]) -> int:
    """The least GPU memory `stage` can run in (4-bit LLM, sequentially offloaded decoder)."""
    if stage == "llm":
        return est[stage].gpu_bytes("int4")
    return est[stage].gpu_bytes(offload="sequential" if stage in DECODERS else None)


def _cpu_warnings(chosen, est, gpus, fraction) -> list[str]:
    budgets = ", ".join(_gib(int(g.total_bytes * fraction)) for g in gpus)
    return [f"{stage} does not fit on a GPU beside the stages placed before it (it needs at least "
            f"{_gib(_smallest(stage, est))}; GPU budgets {budgets}): it runs on the CPU in float32, slowly. "
            "Use a bigger GPU, a higher budget_fraction, or a smaller Headroom (fewer llm_streams, a shorter "
            "llm_context)." for stage in STAGE_ORDER if chosen[stage][0] is None]


def _no_fit_message(gpus, fraction, est, quantize) -> str:
    budgets = ", ".join(f"cuda:{g.index} {g.name} {_gib(int(g.total_bytes * fraction))}" for g in gpus)
    llm = est["llm"].gpu_bytes(quantize or "int4")
    smallest = llm + _smallest("encoder", est) + max(_smallest(s, est) for s in DECODERS)
    return (f"NExT-GPT does not fit on the GPUs present (budgets: {budgets}). The smallest GPU plan "
            f"({quantize or 'int4'} LLM, sequentially offloaded decoders) needs about {_gib(smallest)} on one GPU. "
            "Allow CPU fallback, raise budget_fraction, or reduce Headroom (llm_streams, llm_context).")


# --- applying a StagePlan (used by the loader) ------------------------------------------------------
def bitsandbytes_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def bnb_config(quantize: str):
    """transformers' BitsAndBytesConfig for the LLM's weights (needs the bitsandbytes package).
    lm_head stays fp16 (bitsandbytes skips it), as do embed_tokens and the LoRA layers."""
    import torch
    from transformers import BitsAndBytesConfig

    if QUANT_ALIASES[quantize] == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float16)


def apply_offload(pipe, offload: str, device: str):
    """diffusers' CPU offload on a pipeline loaded on the CPU: 'model' moves one whole sub-model
    (text encoder, UNet, VAE, vocoder) to `device` when it runs; 'sequential' streams layer by layer."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise ValueError(f"offload must be 'model' or 'sequential', got {offload!r}")
    return pipe
