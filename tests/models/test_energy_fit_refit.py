"""``python -m models.energy_fit`` (main): refitting the board-power model on the measured rows gives the
shipped models/data/power.json (written here to a temporary path): the same coefficients, conformal
relative error, row count, sources and GPUs."""
from __future__ import annotations

import json

import pytest

from models import energy as EN
from models import energy_fit as EF


def test_refit_reproduces_the_shipped_power_model(tmp_path, monkeypatch, capsys):
    shipped = json.loads(EN.PARAMS_PATH.read_text())
    monkeypatch.setattr(EN, "PARAMS_PATH", tmp_path / "power.json")
    assert EF.main() == 0
    doc = json.loads((tmp_path / "power.json").read_text())
    assert set(doc) == set(shipped)
    for k in ("active", "c_memory", "c_compute", "rel_err"):
        assert doc[k] == pytest.approx(shipped[k], rel=1e-6), k
    assert (doc["rows"], doc["sources"], doc["gpus"]) == (shipped["rows"], shipped["sources"], shipped["gpus"])
    assert json.loads(capsys.readouterr().out) == doc
