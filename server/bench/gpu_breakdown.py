"""Where an eager pipeline call spends device time, by module class: CUDA events around every
forward of the named classes (a CPU clock where there is no CUDA), summed per class.

A kernel table (gpu_report.kernel_profile) names kernels; this names the parts of the model they
belong to: the temporal convolutions of a UNet3D against its spatial attention, say, or the VAE's
decoder against the UNet. Times are inclusive (a Conv3d inside a TemporalConvLayer counts in both)
and measured eager, where every module's kernels run where its forward runs.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch

# (row label, the pipeline component it is looked up in, the class names of the modules timed;
# None: the component itself)
PARTS = (("UNet, whole", "unet", ("UNet3DConditionModel", "UNet2DConditionModel")),
         ("temporal conv layers", "unet", ("TemporalConvLayer",)), ("  their Conv3d", "unet", ("Conv3d",)),
         ("temporal transformers", "unet", ("TransformerTemporalModel",)),
         ("spatial transformers", "unet", ("Transformer2DModel",)), ("resnet blocks", "unet", ("ResnetBlock2D",)),
         ("  Conv2d (resnets, down/up samplers)", "unet", ("Conv2d",)), ("GroupNorm", "unet", ("GroupNorm",)),
         ("attention (spatial, temporal, cross)", "unet", ("Attention",)),
         ("VAE decoder", "vae", ("Decoder",)), ("text encoder", "text_encoder", None), ("vocoder", "vocoder", None))


class _Clock:
    """Start/stop marks on the device's stream (CUDA events) or the host clock."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start


@contextmanager
def timed_parts(pipe, cuda: bool):
    """Hooks on the pipeline's modules of PARTS while the block runs; yields the dict that gets,
    once the block has ended, label -> (seconds, calls)."""
    clock, marks, result = _Clock(cuda), defaultdict(list), {}
    handles, open_marks = [], {}
    for label, component, classes in PARTS:
        model = pipe.components.get(component)
        if not isinstance(model, torch.nn.Module):
            continue
        modules = [model] if classes is None else [m for m in model.modules() if type(m).__name__ in classes]
        for m in modules:
            handles.append(m.register_forward_pre_hook(lambda mod, args: open_marks.__setitem__(id(mod), clock.mark())))
            handles.append(m.register_forward_hook(
                lambda mod, args, out, label=label: marks[label].append((open_marks.pop(id(mod)), clock.mark()))))
    try:
        yield result
    finally:
        for h in handles:
            h.remove()
        if cuda:
            torch.cuda.synchronize()
        for label, pairs in marks.items():
            result[label] = (sum(clock.seconds(a, b) for a, b in pairs), len(pairs))


def breakdown_table(parts: dict, total_s: float, steps: int) -> str:
    """The parts as a table: seconds per call, per denoising step, share of the whole call."""
    lines = [f"{'part':<40} {'calls':>6} {'s/call':>8} {'ms/step':>8} {'share':>6}",
             f"{'whole pipeline call':<40} {1:>6} {total_s:>8.3f} {1e3 * total_s / steps:>8.1f} {'100%':>6}"]
    for label, _, _ in PARTS:
        if label in parts:
            seconds, calls = parts[label]
            lines.append(f"{label:<40} {calls:>6} {seconds:>8.3f} {1e3 * seconds / steps:>8.1f} "
                         f"{100 * seconds / total_s:>5.0f}%")
    return "\n".join(lines)
