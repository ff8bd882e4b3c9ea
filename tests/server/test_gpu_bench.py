"""The GPU bench's script (server/bench/gpu.py) at toy sizes on the CPU: what a lent GPU runs, so
that a 15-minute lease is not spent finding a broken script. Its timings mean nothing here."""
from __future__ import annotations

import json
import re

from server.bench import gpu


def test_the_gpu_bench_runs_every_llm_and_video_row_at_toy_size(tmp_path, capsys):
    out = tmp_path / "bench.json"
    gpu.main(["--tiny-cpu", "--only", "llm,video", "--profile", "--out", str(out)])
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert not [r for r in report["rows"] if r["error"]], report["rows"]
    assert {"llm: HF generate (stock)", "llm: static cache + compiled step (ours)",
            "llm: the server's batcher, one request (ours, as served)",
            "video: Zeroscope 24x320x576 (stock)", "video: Zeroscope 24x320x576 (ours)"} <= rows.keys()
    # the server's own path stayed on its static cache for every step (a fall-back would say fewer)
    served = re.search(r"(\d+) of (\d+) steps on the static path", rows["llm: the server's batcher, one request (ours, as served)"]["note"])
    assert served and served[1] == served[2] and int(served[1]) > 0
    assert "VAE only" in rows["video: Zeroscope 24x320x576 (ours)"]["note"]  # no NHWC claim for Conv3d
    # --profile: one table per profiled row, naming real ops
    profiles = report["profiles"]
    assert set(profiles) == {"llm: static cache + compiled step (ours)", "video: Zeroscope 24x320x576 (ours)"}
    assert all("Self CPU" in table and "aten::" in table for table in profiles.values())
    assert "profile of video: Zeroscope" in capsys.readouterr().out
    # and the eager stock call's device time by part of the model
    table = report["breakdowns"]["video: Zeroscope 24x320x576 (stock)"]
    parts = {line[:40].strip(): line.split() for line in table.splitlines()[1:]}
    assert {"whole pipeline call", "UNet, whole", "temporal conv layers", "their Conv3d", "VAE decoder",
            "text encoder"} <= parts.keys()
    assert parts["UNet, whole"][-4] == "2"  # calls: 2 steps, the guidance's two halves in one batch
    assert parts["their Conv3d"][-4] == str(2 * 4 * 8)  # 4 in each of the toy UNet3D's 8 temporal conv layers
