"""advisor fit: refuses non-physical rows (row and column named), never overwrites a file, installs only
when asked, and --reset restores the shipped model (issue 15)."""
from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from advisor.cli import main

SHIPPED = "measurement/data/measurements.csv"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    return tmp_path


def _rows(path, n=3, **change):
    with open(SHIPPED, newline="") as fh:
        rd = csv.DictReader(fh)
        rows = [r for r, _ in zip(rd, range(n), strict=False)]
        cols = rd.fieldnames
    rows[-1].update(change)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def test_fit_needs_a_named_output(home):
    r = CliRunner().invoke(main, ["fit"])
    assert r.exit_code == 2 and "--out" in r.output


@pytest.mark.parametrize("change,needle", [({"decode_ms_per_token": "1e-308"}, "beats its roofline"),
                                           ({"decode_ms_per_token": "inf"}, "not a finite positive"),
                                           ({"peak_mem_gb": "-3"}, "not a finite positive")])
def test_non_physical_rows_are_refused_with_their_row(home, change, needle):
    data = _rows(home / "mine.csv", **change)
    r = CliRunner().invoke(main, ["fit", "--data", str(data), "--out", str(home / "m.json")])
    assert r.exit_code == 2 and needle in r.output and "row 4" in r.output
    assert not (home / "m.json").exists()


def test_fit_never_overwrites_a_file(home):
    data = _rows(home / "mine.csv")
    before = data.read_bytes()
    r = CliRunner().invoke(main, ["fit", "--data", str(data), "--out", str(data)])
    assert r.exit_code == 2 and "never overwritten" in r.output and data.read_bytes() == before
    other = home / "x.json"
    other.write_text("{}")
    r = CliRunner().invoke(main, ["fit", "--out", str(other)])
    assert r.exit_code == 2 and other.read_text() == "{}"


def test_refit_is_default_only_when_installed(home):
    from models.fit_store import user_model_path
    out = home / "refit.json"
    r = CliRunner().invoke(main, ["fit", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and not user_model_path().exists()
    r = CliRunner().invoke(main, ["fit", "--out", str(home / "second.json"), "--install"])
    assert r.exit_code == 0 and user_model_path().exists()
    r = CliRunner().invoke(main, ["fit", "--reset"])
    assert r.exit_code == 0 and not user_model_path().exists()


@pytest.mark.parametrize("blob", [b'{"coef": [1,2', b"\x00\xff garbage", b'{"coef": "x"}'])
def test_a_corrupt_installed_model_falls_back_with_a_note(home, blob):
    from models.fit_store import user_model_path
    user_model_path().parent.mkdir(parents=True, exist_ok=True)
    user_model_path().write_bytes(blob)
    r = CliRunner().invoke(main, ["recommend", "--gpu", "l4", "--model", "llama3.1-8b", "--engine", "transformers"])
    assert r.exit_code == 0 and r.exception is None
    assert "unusable" in r.output and "analytical cost model" in r.output


def test_validate_plots_folder_that_cannot_exist_is_an_input_error(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    r = CliRunner().invoke(main, ["validate", "--plots", str(f / "plots")])
    assert r.exit_code == 2 and "cannot create the folder" in r.output and f.read_text() == "x"


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs a POSIX FIFO")
@pytest.mark.parametrize("cmd", [["fit", "--out", "m.json"], ["validate"]])
def test_a_fifo_given_as_data_is_refused_without_reading_it(home, cmd):
    """A FIFO given to --data hung the command (nobody writes to it): it is refused as not a regular file
    before anything opens it (issue 15). A hang here would stall the test run, not pass it."""
    import os
    fifo = home / "rows.csv"
    os.mkfifo(fifo)
    args = [cmd[0], "--data", str(fifo)] + ([cmd[1], str(home / cmd[2])] if len(cmd) > 1 else [])
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "not a regular file" in r.output
