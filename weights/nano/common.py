"""Shared training machinery: the stage context, seeding, EMA, learning-rate schedule, loops."""
from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from .config import Budget

DONE = "DONE.json"
PROGRESS = "progress.json"  # {"step", "total"} of a stage under way: what a parallel run's bars show
PROGRESS_EVERY_S = 2.0


@dataclass
class Context:
    """Where a training run writes, with which seed and budget."""

    work: Path  # scratch directory: one sub-directory per stage, each with a DONE marker
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    threads: int = 2
    log: Callable[[str], None] = print

    def dir(self, stage: str) -> Path:
        path = self.work / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def done(self, stage: str) -> bool:
        return (self.work / stage / DONE).is_file()

    def extendable(self, stage: str) -> bool:
        """Done with fewer steps than the budget now asks, and its final state kept: it can go on."""
        steps = self.info(stage).get("steps")
        return (self.done(stage) and stage in self.budget.steps and steps is not None
                and steps < self.steps(stage) and (self.work / stage / FINAL).is_file())

    def forget(self, stage: str) -> None:
        """Drop a stage's marker and saved training states, so that it runs again from step 0."""
        for name in (DONE, FINAL, CHECKPOINT):
            (self.work / stage / name).unlink(missing_ok=True)

    def mark_done(self, stage: str, info: dict) -> None:
        (self.dir(stage) / DONE).write_text(json.dumps(info, indent=2))

    def report(self, stage: str, step: int, total: int) -> None:
        """Where a stage's steps are, for a run that trains it in another process (schedule.py)."""
        tmp = self.dir(stage) / (PROGRESS + ".tmp")
        tmp.write_text(json.dumps({"step": step, "total": total}))
        tmp.replace(self.dir(stage) / PROGRESS)

    def progress(self, stage: str) -> dict:
        path = self.work / stage / PROGRESS
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet
            return {}

    def info(self, stage: str) -> dict:
        path = self.work / stage / DONE
        return json.loads(path.read_text()) if path.is_file() else {}

    def steps(self, stage: str) -> int:
        return self.budget.steps[stage]

    def batch(self, stage: str) -> int:
        return self.budget.batch[stage]

    def rng(self, stage: str, salt: int = 0) -> random.Random:
        """A stage's own data stream: independent of the other stages and of the run order."""
        return random.Random(f"{self.seed}:{stage}:{salt}")

    def seed_torch(self, stage: str) -> None:
        s = int.from_bytes(f"{self.seed}:{stage}".encode(), "little") % (2**31)
        torch.manual_seed(s)
        np.random.seed(s % (2**32))
        random.seed(s)


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


class EMA:
    """Exponential moving average of a module's parameters (kept on the side, swapped in at save)."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999, warmup: bool = True):
        self.module = module
        self.decay = decay
        self.warmup = warmup  # without it, the decay holds from the first update: a fixed window
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.dtype.is_floating_point}
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for k, v in self.module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)

    def copy_to(self, module: torch.nn.Module | None = None) -> torch.nn.Module:
        target = module or copy.deepcopy(self.module)
        target.load_state_dict({**target.state_dict(), **self.shadow})
        return target


def lr_at(step: int, total: int, peak: float, warmup: int = 50, floor: float = 0.1) -> float:
    """Linear warm-up, cosine decay to `floor * peak`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


CHECKPOINT = "checkpoint.pt"  # mid-stage state, removed when the stage ends
FINAL = "final.pt"  # the state at the stage's last step
CHECKPOINT_EVERY_S = 180.0


def _save_checkpoint(path: Path, step: int, smooth, elapsed: float, modules: dict, opt, ema, rng) -> None:
    state = {
        "step": step, "smooth": smooth, "elapsed": elapsed, "optimizer": opt.state_dict(),
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "ema": [e.shadow for e in ema or []], "ema_updates": [e.updates for e in ema or []],
        "rng": rng.getstate() if rng is not None else None, "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous checkpoint


def _load_checkpoint(path: Path, modules: dict, opt, ema, rng) -> tuple[int, float | None, float]:
    state = torch.load(path, weights_only=False)
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    opt.load_state_dict(state["optimizer"])
    for e, shadow, updates in zip(ema or [], state["ema"], state["ema_updates"]):
        e.shadow, e.updates = shadow, updates
    if rng is not None:
        rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    return state["step"], state["smooth"], state["elapsed"]


def train_loop(stage: str, ctx: Context, params: Iterable, step_fn: Callable[[int], dict],
               lr: float, ema: list[EMA] | None = None, clip: float = 1.0, weight_decay: float = 0.0,
               param_groups: list[dict] | None = None, betas: tuple[float, float] = (0.9, 0.99),
               modules: dict[str, torch.nn.Module] | None = None, rng: random.Random | None = None) -> dict:
    """Run `ctx.steps(stage)` optimiser steps; `step_fn(i)` returns {'loss': tensor, ...}.

    Every few minutes the trained `modules`, the optimiser, the EMAs and every random state (the
    stage's data `rng` included) go to `<stage>/checkpoint.pt`; a killed stage resumes there and
    continues exactly as if it had not stopped.
    """
    params = [p for p in params if p.requires_grad] if param_groups is None else None
    groups = param_groups or [{"params": params}]
    for g in groups:
        g.setdefault("lr_scale", 1.0)
    # foreach: one kernel call per step over all tensors, not a Python loop over them (CPU's default);
    # the same arithmetic: a vocoder stage's weights came out byte-identical
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas, foreach=True)
    total = ctx.steps(stage)
    smooth, start, before = None, 0, 0.0
    ckpt, final = ctx.dir(stage) / CHECKPOINT, ctx.dir(stage) / FINAL
    if modules is not None and ckpt.is_file():
        start, smooth, before = _load_checkpoint(ckpt, modules, opt, ema, rng)
        ctx.log(f"[{stage}] resumed at step {start}/{total}")
    elif modules is not None and final.is_file():  # a finished stage given more steps: go on from its end
        start, smooth, before = _load_checkpoint(final, modules, opt, ema, rng)
        ctx.log(f"[{stage}] extended from step {start} to {total}")
    t0 = time.time() - before
    last_save = last_report = time.time()
    bar = tqdm(range(start, total), desc=stage, dynamic_ncols=True, mininterval=5.0, initial=start, total=total)
    for i in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(i, total, lr, warmup=min(100, total // 10 + 1)) * g["lr_scale"]
        out = step_fn(i)
        loss = out["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
        opt.step()
        for e in ema or []:
            e.update()
        value = float(loss.detach())
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        if i % 20 == 0 or i == total - 1:
            extra = {k: f"{float(torch.as_tensor(v).detach()):.4f}" for k, v in out.items() if k != "loss"}
            bar.set_postfix(loss=f"{smooth:.4f}", **extra)
        if i % 200 == 0 or i == total - 1:
            ctx.log(f"[{stage}] step {i + 1}/{total} loss {smooth:.4f} {time.time() - t0:.0f}s")
        if time.time() - last_report > PROGRESS_EVERY_S:
            ctx.report(stage, i + 1, total)
            last_report = time.time()
        if modules is not None and time.time() - last_save > CHECKPOINT_EVERY_S and i + 1 < total:
            _save_checkpoint(ckpt, i + 1, smooth, time.time() - t0, modules, opt, ema, rng)
            last_save = time.time()
    if modules is not None:  # kept so that a larger budget can extend the stage later
        _save_checkpoint(final, total, smooth, time.time() - t0, modules, opt, ema, rng)
    ckpt.unlink(missing_ok=True)
    ctx.report(stage, total, total)
    return {"steps": total, "final_loss": smooth, "seconds": round(time.time() - t0, 1)}
