"""`nextgpt bench --profile`'s reading of a cProfile run: a probe's cumulative time, and the rest as "other"."""
from __future__ import annotations

import time

from server.bench.profile import Profile, profile, table

PROBES = {"the part": ("test_bench_profile.py", "slow_part"), "never called": ("nowhere.py", "nothing")}


def slow_part(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # busy, so that the profiler sees it as this function's time
        pass


def whole() -> None:
    slow_part(0.05)
    slow_part(0.05)
    end = time.perf_counter() + 0.03
    while time.perf_counter() < end:
        pass


def test_a_probe_gets_its_functions_time_and_the_rest_is_other():
    result = profile(whole, PROBES)
    assert 0.09 <= result.stages["the part"] <= result.total_s
    assert "never called" not in result.stages
    assert 0.02 <= result.stages["other"] <= result.total_s - result.stages["the part"] + 1e-9
    assert abs(sum(result.stages.values()) - result.total_s) < 1e-6


def test_the_table_lists_each_side_and_the_totals():
    ours = Profile(1.0, {"diffusion (pipeline call)": 0.9, "other": 0.1})
    stock = Profile(2.0, {"pipeline loaded from disk": 1.0, "diffusion (pipeline call)": 0.9, "other": 0.1})
    text = table("three-turn", ours, stock)
    assert "pipeline loaded from disk" in text and "90.0%" in text and "50.0%" in text
    assert text.splitlines()[-1].split()[:2] == ["total", "1.000"]
