"""Refitting a shipped parameter file from its measured rows gives the shipped file (written here to a
temporary path): ``python -m models.energy_fit`` -> models/data/power.json and ``python -m models.tp_model`` ->
models/data/allreduce.json. They fail when the rows change without a refit, which is the point."""
from __future__ import annotations

import json

import pytest

from models import energy as EN
from models import energy_fit as EF
from models import tp_model as TM
from profiles import load

CASES = {  # name: (module holding the path, path attribute, refit entry point, fitted keys, exact keys)
    "power": (EN, "PARAMS_PATH", EF.main, ("active", "c_memory", "c_kv", "c_compute", "rel_err"),
              ("rows", "sources", "gpus")),
    "allreduce": (TM, "ALLREDUCE_PATH", TM.main,
                  ("alpha_s", "busbw_gbps", "link_efficiency", "fit_median_ape", "datasheet_link_gbps_per_direction"),
                  ("rows", "sources")),
}


def _refit(name, tmp_path, monkeypatch) -> tuple[dict, dict]:
    mod, attr, main, fitted, exact = CASES[name]
    shipped = json.loads(getattr(mod, attr).read_text())
    monkeypatch.setattr(mod, attr, tmp_path / f"{name}.json")
    assert main() == 0
    doc = json.loads((tmp_path / f"{name}.json").read_text())
    assert set(doc) == set(shipped)
    for k in fitted:
        assert doc[k] == pytest.approx(shipped[k], rel=1e-6), k
    assert [doc[k] for k in exact] == [shipped[k] for k in exact]
    return doc, shipped


def test_refit_reproduces_the_shipped_power_model(tmp_path, monkeypatch, capsys):
    doc, _ = _refit("power", tmp_path, monkeypatch)
    assert json.loads(capsys.readouterr().out) == doc


def test_refit_reproduces_the_shipped_allreduce_constants(tmp_path, monkeypatch, capsys):
    doc, _ = _refit("allreduce", tmp_path, monkeypatch)
    link = float(load().gpu("h200").interconnect["gpu_to_gpu_gbps"]) / 2
    assert doc["link_efficiency"] == pytest.approx(doc["busbw_gbps"] / link)
    printed = json.loads(capsys.readouterr().out)
    assert printed["allreduce"] == doc
    assert set(printed["validation"]["decode"]["leave_one_num_gpus_out"]["groups"]) == {"1", "2"}
    ar = TM.fitted_allreduce()  # the rows read again by default
    assert ar["alpha_s"] == pytest.approx(doc["alpha_s"]) and ar["rows"] == doc["rows"]
