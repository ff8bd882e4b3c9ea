"""`nextgpt bench --profile`: where a scenario's time goes, ours and stock, from cProfile.

A ratio says how much faster we are; this says why a ratio is what it is. Each side of a
scenario runs once under cProfile, and the cumulative time of a few known entry points (media
encoding, the token loop, the output projections, pipeline loading, the diffusion loop) is read
from the profile; what none of them covers is "other" (prompt building, output encoding,
Python glue).
"""
from __future__ import annotations

import cProfile
import pstats
import time
from dataclasses import dataclass
from typing import Callable

# stage -> (a fragment of the file's path, the function's name): the entry points whose cumulative
# time is the stage's. None of them calls another, so their times add up.
PROBES: dict[str, tuple[str, str]] = {
    "encode media (ImageBind)": ("models/encoder.py", "encode"),
    "LLM tokens (ours: KV-cached loop)": ("models/generate.py", "generate"),
    "LLM tokens (HF generate, all states kept)": ("transformers/generation/utils.py", "generate"),
    "output projections": ("models/nextgpt.py", "_project"),
    "pipeline loaded from disk": ("diffusers/pipelines/pipeline_utils.py", "from_pretrained"),
    "diffusion (pipeline call)": ("diffusers/pipelines/", "__call__"),
}


@dataclass
class Profile:
    total_s: float
    stages: dict[str, float]  # stage -> seconds, "other" included

    def line(self, stage: str) -> str:
        seconds = self.stages.get(stage, 0.0)
        return f"{seconds:8.3f} s {100 * seconds / self.total_s:5.1f}%" if self.total_s else "-"


def stage_seconds(stats: pstats.Stats, probes: dict[str, tuple[str, str]] = PROBES) -> dict[str, float]:
    """Cumulative seconds of each probe's functions in a profile (0 for the ones never called)."""
    seconds = dict.fromkeys(probes, 0.0)
    for (filename, _line, name), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
        path = filename.replace("\\", "/")
        for stage, (fragment, function) in probes.items():
            if fragment in path and name == function:
                seconds[stage] += cumulative
    return seconds


def profile(fn: Callable[[], object], probes: dict[str, tuple[str, str]] = PROBES) -> Profile:
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(fn)
    total = time.perf_counter() - start
    stages = {k: v for k, v in stage_seconds(pstats.Stats(profiler), probes).items() if v > 0}
    stages["other"] = max(0.0, total - sum(stages.values()))
    return Profile(total, stages)


def table(name: str, ours: Profile, stock: Profile) -> str:
    """Ours against stock, stage by stage (seconds under the profiler, which slows Python code)."""
    stages = [s for s in (*PROBES, "other") if s in ours.stages or s in stock.stages]
    lines = [f"profile: {name} (one run each, under cProfile)",
             f"  {'stage':<44}{'ours':>17}{'stock':>17}"]
    lines += [f"  {stage:<44}{ours.line(stage):>17}{stock.line(stage):>17}" for stage in stages]
    lines.append(f"  {'total':<44}{ours.total_s:8.3f} s {'':>6}{stock.total_s:8.3f} s")
    return "\n".join(lines)
