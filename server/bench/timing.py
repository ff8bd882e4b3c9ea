"""Small timing helpers shared by the bench scenarios."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Comparison:
    """Our way against the stock way for the same work; `ratio` > 1 means we are faster
    (for 'lower is better' targets like overheads, `ratio` is ours/theirs and `better` says so)."""

    scenario: str
    ours_s: float
    stock_s: float
    what: str  # what "stock" means in this row
    higher_is_better: bool = True  # stock/ours speed-up (True) or ours/reference overhead (False)
    target: float | None = None
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.stock_s / self.ours_s if self.ours_s else float("inf")
        return self.ours_s / self.stock_s if self.stock_s else float("inf")

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "ours_s": self.ours_s, "stock_s": self.stock_s, "ratio": self.ratio,
                "what": self.what, "target": self.target, "met": self.met, "stages": self.stages}
