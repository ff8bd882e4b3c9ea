"""`python -m server.bench.gpu [--quick] [--tiny-cpu] [--out FILE]`: the released NExT-GPT's stages
at real size with random weights on one GPU, each measured our way and (where cheap) the stock way.

Rows: LLM decode tokens/s for one stream (HF generate vs a static KV cache with a compiled decode
step, as % of the memory-bandwidth limit); Stable Diffusion 1.5 512x512, 50 steps with guidance;
Zeroscope v2 576w 24x320x576, 50 steps; AudioLDM-l-full 9 s, 50 steps; a whole image-out turn
(LLM 32 tokens + output projection + SD). Every row: warm-up first (few steps: compilation and
cuDNN autotuning need only the shapes), then the median of a few runs. Printed as a table and
written as JSON with the device, the library versions and the plan. Sized to finish in under
8 minutes on an H100 (`--quick`: about half); `--tiny-cpu` runs the same code at toy sizes on a
CPU in well under a minute, to check the script where no GPU is lent. See docs/gpu-bench.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from models.acceleration import accelerate_pipeline, for_modality, uncompiled

from . import gpu_arch as arch
from . import gpu_llm as llm
from .gpu_breakdown import breakdown_table, timed_parts
from .gpu_report import Report, Row, kernel_profile

SIGNAL_IMG = [32002, 32003, 32004, 32005]  # [IMG0..3] in the release's vocabulary


@dataclass(frozen=True)
class BenchPlan:
    device: str = "cuda"
    dtype: torch.dtype = torch.float16
    tiny: bool = False  # toy sizes (gpu_arch): checks the script itself, its timings mean nothing
    repeats: int = 3  # measured runs of each of our rows; the median is reported
    stock_repeats: int = 3  # measured runs of each stock-way row
    prompt_tokens: int = 32  # a short chat prompt
    new_tokens: int = 128  # per LLM run: long enough that the prefill is noise in tokens/s
    turn_tokens: int = 32  # the LLM part of the image-out turn (the target)
    steps: int = 50  # diffusion steps: the reference demo's default
    warmup_steps: int = 2  # warm-up calls only need the shapes, not 50 steps
    guidance: float = 7.5  # this and the sizes below: the reference demo's defaults (shared/NEXTGPT.md)
    image_size: int = 512
    video_frames: int = 24
    video_height: int = 320
    video_width: int = 576
    audio_seconds: float = 9.0
    compile_backend: str | None = "inductor"  # None: eager only; "eager": dynamo tracing, no codegen (CPU)
    compile_mode: str = "reduce-overhead"  # CUDA graphs: a decode step and a UNet step are launch bound
    compile_unets: bool = True  # SD and AudioLDM UNets (about a minute of compilation each)
    compile_video: bool = False  # Zeroscope's UNet3D: the slowest compile (--compile-video; +1-2 min)
    bandwidth_tbs: float | None = None  # overrides the datasheet figure looked up by device name
    profile: bool = False  # one more call of each compiled row under torch.profiler (--profile)
    profile_steps: int = 5  # diffusion steps of a profiled call: the per-step parts repeat, the trace stays small


QUICK = dict(repeats=2, stock_repeats=1, new_tokens=64)
TINY_CPU = dict(device="cpu", dtype=torch.float32, tiny=True, repeats=1, stock_repeats=1, prompt_tokens=8,
                new_tokens=8, turn_tokens=4, steps=2, warmup_steps=1, image_size=32, video_frames=2,
                video_height=32, video_width=32, audio_seconds=1.0, compile_backend="eager", compile_unets=False,
                compile_video=False, profile_steps=2)


def sync(plan: BenchPlan) -> None:
    if plan.device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(plan: BenchPlan, fn, repeats: int) -> float:
    """Median wall time of `repeats` calls, the device synchronised around each."""
    times = []
    for _ in range(max(1, repeats)):
        sync(plan)
        t0 = time.perf_counter()
        fn()
        sync(plan)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def keep_table(plan: BenchPlan, report: Report, kind: str, name: str, heading: str, make_table) -> None:
    """With --profile: `make_table()`'s text printed under `heading` and kept in the JSON under
    `kind` ("profiles", "breakdowns"); a failure is kept in its place, and never costs the row
    it was to explain nor the rows after it."""
    if not plan.profile:
        return
    try:
        table = make_table()
    except Exception as exc:  # noqa: BLE001 - one lent GPU run must report whatever it can
        traceback.print_exc()
        table = f"{heading} failed: {type(exc).__name__}: {exc}"[:500]
    report.info.setdefault(kind, {})[name] = table
    print(f"{heading}:\n{table}", flush=True)


def profile_row(plan: BenchPlan, report: Report, name: str, fn) -> None:
    """With --profile: where one more call of `fn` spends device time, by kernel."""
    keep_table(plan, report, "profiles", name, f"profile of {name}",
               lambda: kernel_profile(fn, plan.device.startswith("cuda")))


def breakdown_row(plan: BenchPlan, report: Report, name: str, pipe, call) -> None:
    """With --profile: the eager pipeline's device time by part (gpu_breakdown), for `call` of
    `plan.profile_steps` steps."""
    def table() -> str:
        with timed_parts(pipe, plan.device.startswith("cuda")) as parts:
            seconds = measure(plan, call, 1)
        return breakdown_table(parts, seconds, plan.profile_steps)

    keep_table(plan, report, "breakdowns", name, f"breakdown of {name}, eager, {plan.profile_steps} steps", table)


def peak_gib(plan: BenchPlan) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if plan.device.startswith("cuda") else None


def memory_mark(plan: BenchPlan) -> int:
    """Bytes allocated now; the peak counter restarts here (see work_gib)."""
    if not plan.device.startswith("cuda"):
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def work_gib(plan: BenchPlan, mark: int) -> float | None:
    """Peak memory above the mark: activations, workspaces (and CUDA-graph pools when compiled),
    what models/placement.py's Headroom estimates."""
    return (torch.cuda.max_memory_allocated() - mark) / 2**30 if plan.device.startswith("cuda") else None


def reset_memory(plan: BenchPlan) -> None:
    torch._dynamo.reset()  # compiled code and CUDA-graph pools keep their models' memory otherwise
    gc.collect()
    if plan.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@contextmanager
def section(report: Report, name: str):
    """A failing section becomes an error row; the rest of the bench still runs."""
    t0 = time.perf_counter()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - one lent GPU run must report whatever it can
        traceback.print_exc()
        report.add(Row(name, error=f"{type(exc).__name__}: {exc}"[:500]))
    finally:
        report.sections[name] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] {report.sections[name]} s", flush=True)


# --- LLM ------------------------------------------------------------------------------------------------
@dataclass
class LlmState:
    model: object
    dec: llm.StaticDecoder
    ids: torch.Tensor
    hf_token_s: float  # seconds per token, HF generate (for the stock estimate of a turn)


def llm_section(plan: BenchPlan, report: Report) -> LlmState:
    model = arch.build_llama(plan.tiny, plan.device, plan.dtype)
    ids = torch.randint(3, 32000, (1, plan.prompt_tokens), device=plan.device)
    n = plan.new_tokens
    weight_bytes = llm.bytes_read_per_token(model)
    tbs = plan.bandwidth_tbs or llm.bandwidth_tbs(report.device)
    limit = tbs * 1e12 / weight_bytes if tbs and plan.device.startswith("cuda") else None
    report.info["llm"] = {"weight_bytes_read_per_token": weight_bytes, "bandwidth_tbs": tbs, "limit_tok_s": limit}

    def pct(tok_s):
        return 100 * tok_s / limit if limit else None

    llm.hf_generate(model, ids, 4)
    t_hf = measure(plan, lambda: llm.hf_generate(model, ids, n), plan.stock_repeats)
    report.add(Row("llm: HF generate (stock)", t_hf, tok_s=n / t_hf, pct_bw=pct(n / t_hf),
                   note=f"{n} tokens, dynamic cache, eager"))
    llm.project_generate(model, ids, 4)
    t_proj = measure(plan, lambda: llm.project_generate(model, ids, n), plan.stock_repeats)
    report.add(Row("llm: project generate()", t_proj, stock_s=t_hf, tok_s=n / t_proj, pct_bw=pct(n / t_proj),
                   note="models/generate.py: DynamicCache, eager, a host sync per token"))
    max_len = plan.prompt_tokens + max(n, plan.turn_tokens + len(SIGNAL_IMG)) + 8
    dec = static_row(plan, report, model, ids, max_len, t_hf, pct, "llm: static cache + compiled step (ours)")
    report.rows[-1].peak_gib = peak_gib(plan)
    report.rows[-1].weights_gib = llm.bytes_read_per_token(model) / 2**30
    served_row(plan, report, model, ids, max_len, t_hf, pct)
    return LlmState(model, dec, ids, t_hf / n)


def static_row(plan: BenchPlan, report: Report, model, ids, max_len: int, t_hf: float, pct,
               name: str) -> llm.StaticDecoder:
    """Our decode: a static cache and the compiled step (greedy, tokens kept on the GPU), then the
    same streamed (a host sync per token)."""
    n = plan.new_tokens
    how = f"compiled ({plan.compile_backend})" if plan.compile_backend else "eager"
    try:
        dec = llm.StaticDecoder(model, max_len, plan.compile_backend, plan.compile_mode)
        # gpt-fast's setting, for this compile only: tune each batch-1 matrix-vector kernel's blocks
        # (201.5 -> 217.6 tok/s on an H200); left on, it stretches the UNets' compiles past minutes
        with torch._inductor.config.patch(coordinate_descent_tuning=True):
            for _ in range(3):  # compile, then CUDA-graph warm-up and recording
                llm.static_generate(dec, ids, 8)
    except Exception as exc:  # noqa: BLE001 - keep measuring the static cache, eager
        traceback.print_exc()
        dec, how = llm.StaticDecoder(model, max_len, None), f"EAGER: compile failed ({type(exc).__name__})"
        llm.static_generate(dec, ids, 8)
    t_static = measure(plan, lambda: llm.static_generate(dec, ids, n), plan.repeats)
    t_prefill = measure(plan, lambda: dec.prefill(ids), plan.repeats)
    profile_row(plan, report, name, lambda: llm.static_generate(dec, ids, n))
    decode_tok_s = (n - 1) / max(t_static - t_prefill, 1e-9)
    pct_static = pct(decode_tok_s)
    report.add(Row(name, t_static, stock_s=t_hf, tok_s=decode_tok_s, pct_bw=pct_static,
                   target=">= 75% of bandwidth limit", met=None if pct_static is None else pct_static >= 75,
                   note=f"{how}; decode-only tok/s (prefill {t_prefill * 1e3:.1f} ms)"))
    t_stream = measure(plan, lambda: llm.static_generate(dec, ids, n, stream=True), plan.repeats)
    report.add(Row(name.replace(" (ours)", ", streamed (host sync per token)"), t_stream, stock_s=t_hf,
                   tok_s=n / t_stream, pct_bw=pct(n / t_stream), note="what a server streaming text pays"))
    return dec


def served_row(plan: BenchPlan, report: Report, model, ids, max_len: int, t_hf: float, pct) -> None:
    """The same decode through the server's own batcher, a lone request on its fast path."""
    from models.llm_batching import BatchingGenerator
    from models.solo_decode import SoloSpec

    n = plan.new_tokens
    batcher = BatchingGenerator(model, max_batch=8, solo=SoloSpec(max_len, plan.compile_backend, plan.compile_mode))
    try:
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids)
        for _ in range(3):  # compile, then CUDA-graph warm-up and recording
            llm.served_generate(batcher, embeds, 8)
        t = measure(plan, lambda: llm.served_generate(batcher, embeds, n), plan.repeats)
        report.add(Row("llm: the server's batcher, one request (ours, as served)", t, stock_s=t_hf, tok_s=n / t,
                       pct_bw=pct(n / t), note=f"prefill included; {batcher.solo_steps_run} of "
                       f"{batcher.steps_run} steps on the static path; sampling and a host sync per token"))
    except Exception as exc:  # noqa: BLE001 - one lent GPU run must report whatever it can
        traceback.print_exc()
        report.add(Row("llm: the server's batcher, one request (ours, as served)", error=f"{type(exc).__name__}: {exc}"[:500]))
    finally:
        batcher.close()


# --- decoders -------------------------------------------------------------------------------------------
def empty_prompt_embeds(pipe, plan: BenchPlan) -> torch.Tensor:
    """The negative prompt "" through the pipeline's own text encoder: [BOS, EOS, pad...] ids."""
    text = pipe.text_encoder
    vocab = text.config.vocab_size
    with torch.no_grad():
        if "Clap" in type(text).__name__:
            ids = torch.full((1, 77), 1, device=plan.device)
            ids[0, :2] = torch.tensor([0, 2])
            return torch.nn.functional.normalize(text(ids).text_embeds, dim=-1)  # (1, 512): AudioLDM
        ids = torch.full((1, 77), vocab - 1, device=plan.device)
        ids[0, 0] = vocab - 2
        return text(ids)[0]  # (1, 77, D)


def speed_up(pipe, plan: BenchPlan, modality: str, compile_unet: bool):
    """Our way on top of the stock pipeline, as the server applies it (models/acceleration.py):
    channels_last, fused QKV projections (not AudioLDM's), compiled UNet."""
    acc = for_modality(modality, plan.compile_mode)
    acc = dataclasses.replace(acc, compile_backend=plan.compile_backend if compile_unet else None)
    return accelerate_pipeline(pipe, plan.device, acc)


def call_kwargs(plan: BenchPlan, modality: str, cond, neg, steps: int) -> dict:
    kwargs = dict(prompt_embeds=cond, negative_prompt_embeds=neg, num_inference_steps=steps,
                  guidance_scale=plan.guidance, generator=torch.Generator(plan.device).manual_seed(0))
    if modality == "image":
        return dict(kwargs, height=plan.image_size, width=plan.image_size, output_type="pil")
    if modality == "video":
        return dict(kwargs, num_frames=plan.video_frames, height=plan.video_height, width=plan.video_width,
                    output_type="np")
    return dict(kwargs, audio_length_in_s=plan.audio_seconds, output_type="np")


def decoder_rows(plan: BenchPlan, report: Report, modality: str, pipe, compile_unet: bool,
                 target_s: float | None):
    """Stock pipeline (negative prompt encoded per call), then ours on the same weights."""
    neg = empty_prompt_embeds(pipe, plan)
    cond = torch.randn_like(neg)
    name = {"image": "image: SD 1.5 512x512", "video": "video: Zeroscope 24x320x576",
            "audio": "audio: AudioLDM-l 9 s"}[modality]

    def stock(steps):
        pipe(**call_kwargs(plan, modality, cond, empty_prompt_embeds(pipe, plan), steps))

    weights = sum(p.numel() * p.element_size() for m in pipe.components.values()
                  if isinstance(m, torch.nn.Module) for p in m.parameters())
    with torch.no_grad():
        stock(plan.warmup_steps)
        mark = memory_mark(plan)
        t_stock = measure(plan, lambda: stock(plan.steps), plan.stock_repeats)
        report.add(Row(f"{name} (stock)", t_stock, note=f"{plan.steps} steps, CFG, fp16 SDPA, eager",
                       peak_gib=peak_gib(plan), weights_gib=weights / 2**30, work_gib=work_gib(plan, mark)))
        breakdown_row(plan, report, f"{name} (stock)", pipe, lambda: stock(plan.profile_steps))
        how = f"compiled UNet ({plan.compile_backend}), " if compile_unet and plan.compile_backend else ""
        try:
            speed_up(pipe, plan, modality, compile_unet)
            for _ in range(2 if how else 1):  # compile, then record CUDA graphs
                pipe(**call_kwargs(plan, modality, cond, neg, plan.warmup_steps))
        except Exception as exc:  # noqa: BLE001 - keep measuring the rest of our way, eager
            if not how:
                raise
            traceback.print_exc()
            pipe.unet = uncompiled(pipe.unet)
            how = f"EAGER: compile failed ({type(exc).__name__}), "
            pipe(**call_kwargs(plan, modality, cond, neg, plan.warmup_steps))
        mark = memory_mark(plan)

        def ours():
            pipe(**call_kwargs(plan, modality, cond, neg, plan.steps))

        t_ours = measure(plan, ours, plan.repeats)
        profile_row(plan, report, f"{name} (ours)",
                    lambda: pipe(**call_kwargs(plan, modality, cond, neg, plan.profile_steps)))
    report.add(Row(f"{name} (ours)", t_ours, stock_s=t_stock, target=f"< {target_s} s" if target_s else "",
                   met=None if target_s is None or plan.tiny else t_ours < target_s,
                   note=how + "channels_last" + (" (VAE only: 5-D Conv3d weights)" if modality == "video" else "")
                   + (", fused QKV" if for_modality(modality).fuse_qkv else "")
                   + ", negative embeds once",
                   peak_gib=peak_gib(plan), weights_gib=weights / 2**30, work_gib=work_gib(plan, mark)))
    return neg


def image_section(plan: BenchPlan, report: Report):
    pipe = arch.build_sd(plan.tiny, plan.device, plan.dtype)
    neg = decoder_rows(plan, report, "image", pipe, plan.compile_unets, 0.6)
    return pipe, neg


def turn_section(plan: BenchPlan, report: Report, state: LlmState, pipe, neg) -> None:
    """One image-out turn: streamed LLM tokens, the signal tokens' hidden states, the output
    projection (the project's nn.Transformer module), then SD, our way."""
    model, dec, ids = state.model, state.dec, state.ids
    proj = arch.build_projection("image", model.config.hidden_size, plan.device, plan.dtype,
                                 out_dim=neg.shape[-1], tiny=plan.tiny)
    signal = torch.tensor([[min(i, model.config.vocab_size - 1) for i in SIGNAL_IMG]], device=plan.device)
    p, t = ids.shape[1], plan.turn_tokens

    def turn():
        with torch.no_grad():
            first = dec.prefill(ids)
            dec.decode(first, p, t - 1, stream=True)
            hidden = dec.hidden_at(signal, p + t - 1)  # (1, 4, H)
            cond = proj(hidden, model.get_input_embeddings()(signal))  # (1, 77, 768)
            pipe(**call_kwargs(plan, "image", cond, neg, plan.steps))

    turn()
    t_turn = measure(plan, turn, plan.repeats)
    stock = report.find("image: SD 1.5 512x512 (stock)")
    stock_s = state.hf_token_s * t + stock.seconds if stock and stock.seconds else None
    report.add(Row("turn: text -> image, whole (ours)", t_turn, stock_s=stock_s, target="< 1.5 s",
                   met=None if plan.tiny else t_turn < 1.5,
                   note=f"LLM {t} tokens + projection + SD; stock = sum of the stock rows"))


def video_section(plan: BenchPlan, report: Report) -> None:
    pipe = arch.build_zeroscope(plan.tiny, plan.device, plan.dtype)
    decoder_rows(plan, report, "video", pipe, plan.compile_video, 4.4)


def audio_section(plan: BenchPlan, report: Report) -> None:
    pipe = arch.build_audioldm(plan.tiny, plan.device, plan.dtype)
    decoder_rows(plan, report, "audio", pipe, plan.compile_unets, 1.0)


# --- main -------------------------------------------------------------------------------------------------
SECTIONS = ("llm", "image", "turn", "video", "audio")


def run(plan: BenchPlan, out_path: str, only=SECTIONS, budget_s: float = 480.0) -> Report:
    """Each section in order; the JSON is rewritten after each one (a run cut short keeps what it
    measured), and sections that would start after `budget_s` are skipped."""
    torch.manual_seed(0)
    if plan.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        import torch._inductor.config as inductor
        inductor.conv_1x1_as_mm = True  # the UNets' 1x1 convolutions as matmuls (diffusers' advice)
    report = Report.start(plan)
    kept: dict = {}  # the LLM and SD pipeline live on into the turn, then are freed
    steps = {"llm": lambda: kept.update(llm=llm_section(plan, report)),
             "image": lambda: kept.update(zip(("pipe", "neg"), image_section(plan, report))),
             "turn": lambda: turn_section(plan, report, kept["llm"], kept["pipe"], kept["neg"]),
             "video": lambda: video_section(plan, report),
             "audio": lambda: audio_section(plan, report)}
    for name in SECTIONS:
        if name not in only or (name == "turn" and not {"llm", "pipe"} <= kept.keys()):
            continue
        if time.perf_counter() - report.started > budget_s:
            report.add(Row(name, error=f"skipped: the {budget_s:.0f} s budget is spent"))
            continue
        with section(report, name):
            steps[name]()
        turn_next = "turn" in only and {"llm", "pipe"} <= kept.keys()
        if name in ("turn", "video", "audio") or (name == "image" and not turn_next):
            kept.clear()
            reset_memory(plan)
        report.save(out_path)
    report.finish(out_path)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and 64-token LLM runs (about half)")
    parser.add_argument("--tiny-cpu", action="store_true", help="toy sizes on the CPU: checks the script only")
    parser.add_argument("--out", default=None, help="JSON path (default: $OUT/gpu-bench.json or ./gpu-bench.json)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no section after this many seconds")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--compile-video", action="store_true", help="also compile Zeroscope's UNet3D (+1-2 min)")
    parser.add_argument("--profile", action="store_true", help="also profile one call of each of our rows")
    parser.add_argument("--bandwidth-tbs", type=float, default=None, help="HBM bandwidth if the name lookup fails")
    args = parser.parse_args(argv)
    overrides = dict(TINY_CPU) if args.tiny_cpu else {}
    if args.quick:
        overrides.update({k: v for k, v in QUICK.items() if not args.tiny_cpu or k != "new_tokens"})
    if args.no_compile:
        overrides.update(compile_backend=None)
    if args.compile_video:
        overrides.update(compile_video=True)
    if args.bandwidth_tbs:
        overrides.update(bandwidth_tbs=args.bandwidth_tbs)
    if args.profile:
        overrides.update(profile=True)
    plan = dataclasses.replace(BenchPlan(), **overrides)
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny-cpu to check the script on a CPU")
    warnings.filterwarnings("ignore", message=".*invalid value encountered.*")  # random weights: NaN pixels
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    run(plan, args.out or Report.default_path(), only, args.budget_s)


if __name__ == "__main__":
    main()
