"""Dataset import without duplicates (no torch needed) and CLI validation."""
import json
import sys

import pytest
from click.testing import CliRunner


def _row(key, date, status="ok", **kw):
    r = {"key": key, "gpu": "h200", "model": "llama3.1-8b", "precision": "bf16", "sparsity": "dense",
         "kv": "kv-fp16", "backend": "compiled", "batch": 1, "prompt_len": 512, "gen_len": 64, "weights": "random",
         "status": status, "reason": None, "gpu_uuid": "GPU-x", "date_utc": date, "decode_ms_per_token": 4.5,
         "decode_trials_ms": [4.5, 4.51, 4.49], "copy_bw_gbps": 4262.0, "matmul_tflops_bf16": 783.0}
    r.update(kw)
    return r


def test_dataset_module_does_not_import_torch():
    import subprocess

    code = "import sys, measurement.dataset, measurement.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_rows_without_duplicates(tmp_path):
    from measurement.dataset import COLUMNS, import_rows, load_dataset

    csv, meta = tmp_path / "m.csv", tmp_path / "m.meta.json"
    run = tmp_path / "run1"
    run.mkdir()
    jl = run / "rows.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [_row("a", "2026-01-01T00:00:00Z"),
                                                     _row("b", "2026-01-01T00:01:00Z", status="does_not_fit")]) + "\n")
    assert import_rows(jl, csv_path=csv, meta_path=meta) == 2
    assert import_rows(jl, csv_path=csv, meta_path=meta) == 0  # same rows again: nothing added
    with open(jl, "a") as fh:  # a new measurement of the same config is a new row
        fh.write(json.dumps(_row("a", "2026-01-02T00:00:00Z")) + "\n")
    assert import_rows(jl, csv_path=csv, meta_path=meta) == 1
    df = load_dataset(csv)
    assert len(df) == 3 and df["row_id"].is_unique
    assert list(df.columns) == list(COLUMNS)
    assert json.loads(df.loc[0, "decode_trials_ms"]) == [4.5, 4.51, 4.49]
    m = json.loads(meta.read_text())
    assert m["columns"]["decode_ms_per_token"]["unit"] == "ms"
    assert m["runs"][0]["run_id"] == "run1" and m["runs"][0]["rows"] == 3
    assert load_dataset(tmp_path / "missing.csv").empty


def test_shipped_dataset_loads():
    from measurement.dataset import CSV_PATH, load_dataset

    df = load_dataset()
    if CSV_PATH.exists():
        assert len(df) > 0 and {"gpu", "model", "status", "decode_ms_per_token"} <= set(df.columns)
        ok = df[df.status == "ok"]
        assert (ok["decode_roofline_frac"].dropna() <= 1.0).all()


def test_cli_validation_unknown_model():
    from measurement.cli import measure_command

    r = CliRunner().invoke(measure_command, ["--model", "llama3.1-8bb", "--dry-run"])
    assert r.exit_code != 0 and "llama3.1-8b" in r.output


def test_cli_validation_unknown_method_and_budget():
    from measurement.cli import measure_command

    r = CliRunner().invoke(measure_command, ["--model", "llama3.1-8b", "--precision", "nf5", "--dry-run"])
    assert r.exit_code != 0 and "nf5" in r.output
    r = CliRunner().invoke(measure_command, ["--model", "llama3.1-8b", "--kv", "snapkv", "--dry-run"])
    assert r.exit_code != 0 and "kv-budget" in r.output
    r = CliRunner().invoke(measure_command, ["--model", "llama3.1-8b", "--precision", "dense", "--dry-run"])
    assert r.exit_code != 0 and "sparsity method" in r.output
    r = CliRunner().invoke(measure_command, ["--model", "llama3.1-8b", "--batch", "0", "--dry-run"])
    assert r.exit_code != 0


def test_cli_weights_path_needs_safetensors(tmp_path):
    from measurement.cli import measure_command

    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    r = CliRunner().invoke(measure_command, ["--model", "llama3.1-8b", "--weights", str(tmp_path), "--dry-run"])
    assert r.exit_code != 0 and "safetensors" in r.output


def test_cli_dry_run_grid():
    from measurement.cli import measure_command

    r = CliRunner().invoke(measure_command, ["--model", "llama3.1-8b,llama-3.2-1b", "--precision", "bf16,nf4",
                                             "--batch", "1,8", "--sparsity", "dense,drop-8", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    start = r.output.index("[")
    cfgs = json.loads(r.output[start:r.output.rindex("]") + 1])
    assert len(cfgs) == 2 * 2 * 2 * 2
    assert {c["model"] for c in cfgs} == {"llama3.1-8b", "llama3.2-1b"}
    assert {c["precision"] for c in cfgs} == {"bf16", "bnb-nf4"}


@pytest.mark.parametrize("name", ["smoke", "h200_8b", "h200_a", "h100_b", "h200_more", "h100", "h200_c", "h100_c"])
def test_shipped_sweeps_validate(name):
    from measurement.cli import measure_command

    r = CliRunner().invoke(measure_command, ["--sweep", f"measurement/sweeps/{name}.yaml", "--dry-run"])
    assert r.exit_code == 0, r.output


def test_cli_runs_tiny_inprocess(tmp_path, monkeypatch):
    """The real CLI path (in-process launcher) on CPU: llama3.2-1b profile shrunk to 2 layers for speed."""
    pytest.importorskip("torch")
    from measurement import build
    from measurement.cli import measure_command

    orig = build.profile_config

    def small(model_id, catalog=None):
        cfg = orig(model_id, catalog)
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 128, 256
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size = 4, 2, 32, 512
        return cfg

    monkeypatch.setattr(build, "profile_config", small)
    out = tmp_path / "o"
    r = CliRunner().invoke(measure_command, ["--model", "llama3.2-1b", "--backend", "eager", "--batch", "1",
                                             "--prompt-len", "16", "--gen-len", "2", "--trials", "1",
                                             "--launcher", "inprocess", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert rows[0]["status"] == "ok" and rows[0]["model"] == "llama3.2-1b"
