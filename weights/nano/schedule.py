"""Train the chain's independent stages side by side, each in a process of its own.

On 2 cores a stage keeps its two torch threads busy only in part: a UNet step on 2 threads takes
0.55 s where 1 thread takes 0.83, not 1.1, because small ops and the waits between them leave a
core idle. Two stages at once, each on its own 2 threads, fill those gaps: measured on this
2-core machine, a pair of stages side by side runs each at 1.66-1.81x its time alone, about 1.15x
the work in the same time. Their threads must sleep while they wait (OMP_WAIT_POLICY=PASSIVE):
spinning, each would burn the core the other needs. The thread count is what decides how a
stage's sums round, not the cores or the neighbour, so every stage's weights are byte-identical
to those of a run one stage at a time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .common import DONE, PROGRESS, Context

POLL_S = 1.0
LOG = "train.log"  # a stage's own output (its log lines and progress bar), under its directory
SCHEDULE = "schedule.json"  # when each stage of the last parallel run started and ended


@dataclass
class Job:
    process: subprocess.Popen
    started: float
    bar: tqdm


def stage_command(ctx: Context, name: str, quick: float | None) -> list[str]:
    """The `train-nano` call that trains one stage in a process of its own (its inputs are done)."""
    cmd = [sys.executable, "-m", "weights.nano.cli", "train-nano", "--work", str(ctx.work), "--stage", name,
           "--seed", str(ctx.seed), "--threads", str(ctx.threads), "--jobs", "1"]
    return cmd + (["--quick", repr(quick)] if quick is not None else [])


def ready(ctx: Context, pending: list[str], needs: Callable[[str], tuple[str, ...]]) -> list[str]:
    """The pending stages whose inputs are all done, in the order given."""
    return [name for name in pending if all(ctx.done(dep) for dep in needs(name))]


def _launch(ctx: Context, name: str, quick: float | None, side_by_side: bool) -> Job:
    env = dict(os.environ)
    if side_by_side:  # alone, a stage's threads may spin: they have the cores to themselves
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    # an earlier run's marker and progress: a stage extended from its end state has a marker
    # already, and the stages that read it must wait for the new one
    for stale in (DONE, PROGRESS):
        (ctx.dir(name) / stale).unlink(missing_ok=True)
    log = (ctx.dir(name) / LOG).open("w")
    process = subprocess.Popen(stage_command(ctx, name, quick), stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()  # the child holds its own handle
    total = ctx.steps(name) if name in ctx.budget.steps else None
    bar = tqdm(total=total, desc=name, dynamic_ncols=True)  # one line per running stage
    return Job(process, time.time(), bar)


def _finished(ctx: Context, running: dict[str, Job]) -> list[str]:
    """The running stages whose process has exited, their bars brought up to date; SystemExit
    (with the end of its log) for one that exited without finishing."""
    finished = []
    for name, job in running.items():
        job.bar.n = ctx.progress(name).get("step", 0)
        job.bar.refresh()
        code = job.process.poll()
        if code is None:
            continue
        job.bar.close()
        if code != 0 or not ctx.done(name):
            raise SystemExit(_failure(ctx, name, code))
        finished.append(name)
    return finished


def _failure(ctx: Context, name: str, code: int) -> str:
    tail = (ctx.work / name / LOG).read_text(errors="replace").replace("\r", "\n").splitlines()[-15:]
    return f"stage {name} failed (exit {code}); the end of {ctx.work / name / LOG}:\n" + "\n".join(tail)


def run_side_by_side(ctx: Context, todo: list[str], needs: Callable[[str], tuple[str, ...]], jobs: int,
                     quick: float | None, log: Callable[[str], None] = print) -> dict:
    """Train the `todo` stages, at most `jobs` at a time, each as soon as the stages it reads are
    done (the first in `todo`'s order first). A stage that fails stops the others (they resume
    from their checkpoints on the next run) and raises SystemExit with the end of its log."""
    pending, running, spans, t0 = list(todo), {}, {}, time.time()
    try:
        while pending or running:
            for name in _finished(ctx, running):
                job = running.pop(name)
                spans[name] = [round(job.started - t0, 1), round(time.time() - t0, 1)]
                log(f"[{name}] done in {ctx.info(name).get('seconds')} s ({time.time() - t0:.0f} s into the run)")
            launch = ready(ctx, pending, needs)[: jobs - len(running)]
            # a stage whose marker is written is only exiting: it leaves the cores to the new one
            busy = [n for n in running if not ctx.done(n)]
            for name in launch:
                pending.remove(name)
                running[name] = _launch(ctx, name, quick, side_by_side=len(busy) + len(launch) > 1)
                beside = [n for n in busy + launch if n != name]
                log(f"[{name}] starting{' beside ' + ', '.join(beside) if beside else ''} "
                    f"(its log: {ctx.work / name / LOG})")
            if not running and pending:
                raise SystemExit(f"stages {pending} wait for stages that are neither done nor to be run")
            if not running:
                break
            time.sleep(POLL_S)
    finally:
        for job in running.values():
            job.process.terminate()
            job.process.wait()
            job.bar.close()
    schedule = {"jobs": jobs, "wall_seconds": round(time.time() - t0, 1), "stages": spans}
    (Path(ctx.work) / SCHEDULE).write_text(json.dumps(schedule, indent=2))
    return schedule
