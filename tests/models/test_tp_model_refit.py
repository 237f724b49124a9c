"""``python -m models.tp_model`` (main): refitting the all-reduce constants from the measured rows gives the
shipped models/data/allreduce.json (written here to a temporary path), and the printed document carries
those constants with the held-out decode validation."""
from __future__ import annotations

import json

import pytest

from models import tp_model as TM
from profiles import load


def test_refit_reproduces_the_shipped_allreduce_constants(tmp_path, monkeypatch, capsys):
    shipped = json.loads(TM.ALLREDUCE_PATH.read_text())
    monkeypatch.setattr(TM, "ALLREDUCE_PATH", tmp_path / "allreduce.json")
    assert TM.main() == 0
    doc = json.loads((tmp_path / "allreduce.json").read_text())
    assert set(doc) == set(shipped)
    for k in ("alpha_s", "busbw_gbps", "link_efficiency", "fit_median_ape", "datasheet_link_gbps_per_direction"):
        assert doc[k] == pytest.approx(shipped[k], rel=1e-6), k
    assert doc["rows"] == shipped["rows"] and doc["sources"] == shipped["sources"]
    link = float(load().gpu("h200").interconnect["gpu_to_gpu_gbps"]) / 2
    assert doc["link_efficiency"] == pytest.approx(doc["busbw_gbps"] / link)
    printed = json.loads(capsys.readouterr().out)
    assert printed["allreduce"] == doc
    assert set(printed["validation"]["decode"]["leave_one_num_gpus_out"]["groups"]) == {"1", "2"}
    ar = TM.fitted_allreduce()  # the rows read again by default
    assert ar["alpha_s"] == pytest.approx(doc["alpha_s"]) and ar["rows"] == doc["rows"]
