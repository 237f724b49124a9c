"""measurement.cli (``advisor measure``) without a GPU: grid and sweep-file validation errors, and the run
paths (subprocess / in-process launcher, Ray) with the launchers faked; the summary, --json and
--import-dataset outputs."""
from __future__ import annotations

import json
import sys
import types

import click
import pytest
from click.testing import CliRunner

from measurement import cli as C
from profiles import load


@pytest.fixture(autouse=True)
def own_peaks_file(monkeypatch, tmp_path):
    """measure sets ADVISOR_PEAKS_FILE in this process when unset, and logs into --out: set here, both are
    undone after each test."""
    import logging

    monkeypatch.setenv("ADVISOR_PEAKS_FILE", str(tmp_path / "machine_peaks.json"))
    lg = logging.getLogger("measurement")
    handlers, level = list(lg.handlers), lg.level
    yield
    for h in lg.handlers[:]:
        if h not in handlers:
            h.close()
            lg.removeHandler(h)
    lg.setLevel(level)


@pytest.fixture(scope="module")
def cat():
    return load()


def _rows_of(configs, status="ok"):
    return [{"key": f"k{i}", "model": rc.model, "precision": rc.precision, "backend": rc.backend, "batch": rc.batch,
             "prompt_len": rc.prompt_len, "status": status, "decode_ms_per_token": 2.5 + i,
             "decode_roofline_frac": float("nan")} for i, rc in enumerate(configs)]


class FakeLauncher:
    made = []

    def __init__(self, out_dir, *, deadline=None, on_row=None):
        self.out_dir, self.deadline, self.on_row = out_dir, deadline, on_row
        FakeLauncher.made.append(self)

    def run(self, configs):
        self.configs = configs
        rows = _rows_of(configs)
        for r in rows:
            self.on_row(r)
        return rows


@pytest.fixture
def launchers(monkeypatch):
    from measurement import launch

    FakeLauncher.made = []
    monkeypatch.setattr(launch, "SubprocessLauncher", FakeLauncher)
    monkeypatch.setattr(launch, "InProcessLauncher", FakeLauncher)
    return FakeLauncher


def _invoke(*args):
    return CliRunner().invoke(C.measure_command, list(args))


def test_subprocess_launcher_run_writes_summary_and_json(tmp_path, launchers, monkeypatch):
    imported = []
    from measurement import dataset

    monkeypatch.setattr(dataset, "import_rows", lambda p: imported.append(p) or 7)
    r = _invoke("--model", "llama3.2-1b", "--batch", "1,4", "--out", str(tmp_path), "--time-budget", "60",
                "--json", "--import-dataset")
    assert r.exit_code == 0, r.output
    (la,) = launchers.made
    assert [rc.batch for rc in la.configs] == [1, 4] and la.deadline is not None and la.out_dir == tmp_path.resolve()
    rows = json.loads(r.output[r.output.index("[\n"):])
    assert [x["batch"] for x in rows] == [1, 4]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("model  prec  sparsity") and len(summary) == 3
    assert summary[1].split()[:3] == ["llama3.2-1b", "bf16", "-"] and " 2.5 " in summary[1]  # NaN shown as '-'
    assert imported == [tmp_path.resolve() / "rows.jsonl"] and "imported 7 new rows" in r.output
    assert "row k0 ok ms/tok=2.5" in (tmp_path / "log.txt").read_text()


def test_inprocess_launcher_and_default_output_folder(tmp_path, launchers, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    r = _invoke("--model", "llama3.2-1b", "--launcher", "inprocess")
    assert r.exit_code == 0, r.output
    (la,) = launchers.made
    assert la.deadline is None and la.out_dir.parent == tmp_path / "xdg" / "advisor"
    assert la.out_dir.name.startswith("measure-") and (la.out_dir / "summary.txt").exists()
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert C.user_data_dir() == tmp_path / "home" / ".local" / "share" / "advisor"


def test_ray_paths(tmp_path, monkeypatch):
    from measurement import scheduler

    calls = []

    def run_ray(configs, out, address, *, backend, num_gpus, on_row):
        calls.append((address, backend, num_gpus))
        if address == "bad:6379":
            raise RuntimeError("the Ray cluster has no GPUs")
        for r in _rows_of(configs):
            on_row(r)
        return {"workers": 2, "written": len(configs), "duplicates": 0}

    monkeypatch.setattr(scheduler, "run_ray", run_ray)
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    r = _invoke("--model", "llama3.2-1b", "--batch", "1,2", "--ray", "--gpus", "0,1", "--fake-backend",
                "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert calls[-1] == ("local", "fake", 2) and "ray: 2 tasks, 2 rows written" in r.output
    r = _invoke("--model", "llama3.2-1b", "--ray", "bad:6379", "--out", str(tmp_path / "b"))
    assert r.exit_code == 2 and "no GPUs" in r.output and calls[-1] == ("bad:6379", "harness", None)
    monkeypatch.setitem(sys.modules, "ray", None)  # not installed
    r = _invoke("--model", "llama3.2-1b", "--ray", "--out", str(tmp_path / "c"))
    assert r.exit_code == 2 and "pip install ray" in r.output


def test_grid_errors(cat, tmp_path):
    assert _invoke("--dry-run").exit_code == 2  # no --model, no --sweep
    bad = [(["--batch", "x"], "'x' is not an integer"), (["--backend", "tensorrt"], "unknown backend 'tensorrt'"),
           (["--compile-mode", "turbo"], "unknown compile mode 'turbo'"),
           (["--sparsity", "drop-layers"], "drop-N"), (["--sparsity", "nope"], "drop-N, e.g. drop-8"),
           (["--weights", "not a hub id!"], "neither 'random'"),
           (["--weights", str(tmp_path / "missing.bin")], "neither 'random'")]
    for extra, msg in bad:
        r = _invoke("--model", "llama3.2-1b", "--dry-run", *extra)
        assert r.exit_code == 2 and msg in r.output, (extra, r.output)
    with pytest.raises(click.BadParameter, match="unknown sweep keys: color"):
        C.expand_grid({"model": "llama3.2-1b", "color": "red"}, cat)
    with pytest.raises(click.BadParameter, match="at least one model"):
        C.expand_grid({"model": ""}, cat)


def test_grid_expansion(cat, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    cs = C.expand_grid({"model": ["llama3.2-1b"], "kv": "snapkv,kv-int8", "kv_budget": "64,128", "batch": [1, 2],
                        "weights": str(tmp_path), "sparsity": "drop-4"}, cat, defaults={"trials": 5})
    # the budgets multiply the eviction policy only
    assert sorted((c.kv, c.kv_budget, c.batch) for c in cs) == sorted(
        [("snapkv", b, n) for b in (64, 128) for n in (1, 2)] + [("kv-int8", None, n) for n in (1, 2)])
    assert {c.trials for c in cs} == {5} and {c.sparsity for c in cs} == {"drop-4"}
    assert {c.weights for c in cs} == {str(tmp_path)}
    assert C.expand_grid({"model": "llama3.2-1b", "weights": "meta-llama/Llama-3.2-1B"}, cat)[0].weights == \
        "meta-llama/Llama-3.2-1B"
    assert C._csv(None) == [] and C._csv([" a", "", 3]) == ["a", "3"]


def test_sweep_file_errors(tmp_path, cat):
    def sweep(text, name="s.yaml"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)

    cases = [(str(tmp_path / "none.yaml"), "no such file"), (str(tmp_path), "not a regular file"),
             (sweep("- a\n- b\n", "list.yaml"), "must be a mapping"), (sweep("", "empty.yaml"), "non-empty 'grids'"),
             (sweep("grids: []\n", "nogrids.yaml"), "non-empty 'grids'"), (sweep("grids: [\n", "bad.yaml"), "not valid YAML")]
    for path, msg in cases:
        with pytest.raises(click.BadParameter, match=msg):
            C.load_sweep(path, cat)
    big = tmp_path / "big.yaml"
    big.write_text("#" * (C.MAX_YAML_BYTES + 1))
    with pytest.raises(click.BadParameter, match="over"):
        C.safe_yaml(big, "--sweep")
    ok = sweep("time_budget_s: 30\ndefaults: {batch: [1, 2]}\ngrids:\n  - {model: llama3.2-1b}\n"
               "  - {model: llama3.2-1b, batch: 2}\n")
    cs, doc = C.load_sweep(ok, cat)
    assert [c.batch for c in cs] == [1, 2] and doc["time_budget_s"] == 30  # the repeated config is listed once


def test_sweep_time_budget_reaches_the_launcher(tmp_path, launchers):
    p = tmp_path / "s.yaml"
    p.write_text("time_budget_s: 30\ngrids:\n  - {model: llama3.2-1b}\n")
    r = _invoke("--sweep", str(p), "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert launchers.made[0].deadline is not None


def test_tables_and_formatting():
    from rich.console import Console

    rows = [{"model": "m", "status": "ok", "decode_ms_per_token": 1234.4, "decode_tok_s": 12.3456, "batch": 8}]
    con = Console(width=250, record=True)
    con.print(C.summary_table(rows))
    text = con.export_text()
    assert "1 rows" in text and "1234" in text and "12.3" in text
    assert C._fmt(None) == "-" and C._fmt(float("nan")) == "-" and C._fmt(0.012345) == "0.0123" and C._fmt(7) == "7"
    assert C.plain_table(rows).splitlines()[1].split()[0] == "m"
