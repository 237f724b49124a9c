"""models.peer_aic: the AIConfigurator side-by-side, run through a fake aiconfigurator package (CPU)."""
from __future__ import annotations

import sys

import numpy as np

from measurement.engine_rows import load_engine_rows
from models.engine_fit import design
from models.peer_aic import queries, side_by_side
from profiles import load

FAKE = '''
class R:
    def __init__(self, q):
        self.ttft, self.tpot, self.backend_version = 100.0, 10.0, "fake"
        self.raw = {"tokens/s": 1000.0 * q}
def cli_estimate(model_path, system, backend_name, isl, osl, batch_size, tp_size, gemm_quant_mode,
                 kvcache_quant_mode=None):
    if system == "l4":
        raise ValueError("no such system")
    return R(batch_size)
'''


def test_side_by_side_through_a_fake_aiconfigurator(tmp_path, monkeypatch):
    pkg = tmp_path / "aiconfigurator" / "cli"
    pkg.mkdir(parents=True)
    (tmp_path / "aiconfigurator" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "api.py").write_text(FAKE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("ADVISOR_AIC_PYTHON", sys.executable)
    monkeypatch.setenv("ADVISOR_CACHE_DIR", str(tmp_path / "cache"))
    cat, rows = load(), load_engine_rows()
    d = design(rows, "vllm", cat)
    qs = queries(d, rows, cat, limit=30)
    assert qs and all(q["system"] and q["batch"] >= 1 and q["isl"] > 0 for _, q in qs)
    ours = np.asarray(d.y, float) * 1.1  # 10% off everywhere
    res = side_by_side(d, rows, cat, ours, limit=30)
    assert res["available"] and res["rows"] == len(qs)
    for m, sc in res["metrics"].items():
        if sc["n"]:
            assert abs(sc["ours_median_ape"] - 0.1) < 1e-9
            assert sc["aic_median_ape"] >= 0


def test_no_aiconfigurator_says_so(monkeypatch):
    monkeypatch.setenv("ADVISOR_AIC_PYTHON", "/nonexistent/python")
    cat, rows = load(), load_engine_rows()
    d = design(rows, "vllm", cat)
    res = side_by_side(d, rows, cat, np.asarray(d.y, float))
    assert res["available"] is False and "ADVISOR_AIC_PYTHON" in res["note"]
