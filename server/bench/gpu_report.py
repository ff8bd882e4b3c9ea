"""Rows, the printed table and the JSON file of the GPU bench (server/bench/gpu.py)."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Row:
    name: str
    seconds: float | None = None  # median wall time of one call, our way (or the row's own way)
    stock_s: float | None = None  # the stock way of the same work, same run
    tok_s: float | None = None  # LLM rows: tokens per second
    pct_bw: float | None = None  # LLM rows: % of the memory-bandwidth limit
    target: str = ""  # the issue's target, as text
    met: bool | None = None
    note: str = ""
    peak_gib: float | None = None  # torch.cuda.max_memory_allocated, absolute (other stages' weights included)
    weights_gib: float | None = None  # this stage's weights (placement calibration)
    work_gib: float | None = None  # peak above what was allocated before the measured runs
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        """Stock time over ours: > 1 means we are faster."""
        if self.seconds and self.stock_s:
            return self.stock_s / self.seconds
        return None

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), ratio=self.ratio)


def _fmt(value, spec: str, width: int) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


@dataclass
class Report:
    device: str
    info: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    sections: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, plan) -> "Report":
        cuda = plan.device.startswith("cuda")
        device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})"
        import diffusers
        import transformers

        info = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
                "transformers": transformers.__version__, "diffusers": diffusers.__version__,
                "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
                "plan": {k: str(v) for k, v in dataclasses.asdict(plan).items()},
                "when": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        print(f"GPU bench on {device}: torch {torch.__version__}, transformers {transformers.__version__}, "
              f"diffusers {diffusers.__version__}{' (TOY SIZES: timings mean nothing)' if plan.tiny else ''}",
              flush=True)
        return cls(device=device, info=info)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print("  " + self.line(row), flush=True)

    def find(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    @staticmethod
    def default_path() -> str:
        return str(Path(os.environ.get("OUT") or ".") / "gpu-bench.json")

    @staticmethod
    def line(r: Row) -> str:
        if r.error:
            return f"{r.name:<44} ERROR {r.error}"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        detail = f"{r.tok_s:.1f} tok/s" if r.tok_s else ""
        detail += f", {r.pct_bw:.0f}% of BW limit" if r.pct_bw else ""
        return (f"{r.name:<44} {_fmt(r.seconds, '.3f', 8)} s {_fmt(r.stock_s, '.3f', 8)} s {_fmt(r.ratio, '.2f', 6)}x "
                f"{r.target:<26} {met:<4} {_fmt(r.peak_gib, '.1f', 6)} {_fmt(r.work_gib, '.1f', 6)}  "
                f"{'; '.join(x for x in (detail, r.note) if x)}")

    def table(self) -> str:
        head = (f"{'stage':<44} {'ours':>10} {'stock':>10} {'ratio':>7} {'target':<26} {'met':<4} "
                f"{'peak':>6} {'work':>6}  detail / note (memory in GiB)")
        return "\n".join([f"device: {self.device}  torch {self.info['torch']}", head] +
                         [self.line(r) for r in self.rows])

    def save(self, path: str) -> None:
        payload = dict(self.info, wall_s=round(time.perf_counter() - self.started, 1), sections=self.sections,
                       rows=[r.as_dict() for r in self.rows])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str))

    def finish(self, path: str) -> None:
        wall = time.perf_counter() - self.started
        print("\n" + self.table() + f"\n\nwall time {wall:.0f} s; sections {self.sections}", flush=True)
        self.save(path)
        print(f"written {path}", flush=True)


def kernel_profile(fn, cuda: bool, rows: int = 20) -> str:
    """One call of `fn` under torch.profiler: the ops (and, on CUDA, kernels) that take the most
    device time, as the profiler's table. What the misses in docs/gpu-bench.md need next."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)

