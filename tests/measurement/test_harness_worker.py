"""measurement.harness's worker entry point (what SubprocessLauncher starts) with the runner faked: it reads
the plan, hands the deadline on, and logs into the output folder."""
from __future__ import annotations

import json
import logging

from measurement import harness as H


def test_worker_runs_the_plan(tmp_path, monkeypatch):
    got = {}

    class FakeRunner:
        def __init__(self, out, deadline=None):
            got.update(out=out, deadline=deadline)

        def run(self, configs):
            got["configs"] = configs
            logging.getLogger("measurement").warning("ran %d", len(configs))
            return []

    monkeypatch.setattr(H, "Runner", FakeRunner)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"model": "llama3.2-1b", "batch": 4}, {"model": "llama3.2-1b", "kv": "snapkv",
                                                                        "kv_budget": 64}]))
    lg = logging.getLogger("measurement")
    before = list(lg.handlers)
    try:
        assert H.main(["--plan", str(plan), "--out", str(tmp_path), "--deadline", "1234.5"]) == 0
    finally:
        for h in lg.handlers[len(before):]:
            h.close()
            lg.removeHandler(h)
    assert got["out"] == str(tmp_path) and got["deadline"] == 1234.5
    assert [(c.batch, c.kv, c.kv_budget) for c in got["configs"]] == [(4, "kv-fp16", None), (1, "snapkv", 64)]
    assert "ran 2" in (tmp_path / "log.txt").read_text()
    assert set(H.__all__) <= set(dir(H))
