"""measurement.llamacpp.run without a GPU: the device runner end to end on fake llama.cpp binaries.

The benchmark binaries are small shell scripts that print llama-bench / llama-batched-bench JSONL lines
(and llama-quantize copies its input), the GPU facts, peaks and the NVML energy sampler are fakes, and
the F16 GGUF is a hand-written file (no gguf package). What is checked: the rows written to rows.csv,
the raw records, status rows for failed, unsupported and skipped steps, and that every file is deleted
once no step needs it.
"""
from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from measurement.llamacpp import files as files_mod
from measurement.llamacpp import run as R
from measurement.llamacpp.bench import ModelFacts

MODEL = "llama3.2-1b"

LB_LINES = [
    "ggml_cuda_init: found 1 CUDA devices:",  # not JSON: ignored
    json.dumps({"n_prompt": 0, "n_gen": 128, "n_depth": 0, "type_k": "f16",
                "samples_ns": [600e6, 560e6, 558e6, 562e6], "samples_ts": [213.3, 228.6, 229.4, 227.8]}),
    "{not json",  # a torn line: ignored
    json.dumps({"n_prompt": 512, "n_gen": 0, "n_depth": 0, "type_k": "f16",
                "samples_ns": [70e6, 50e6, 51e6, 49e6], "samples_ts": [7314.3, 10240.0, 10039.2, 10449.0]}),
]


def _bb(pl, speed_tg, t_tg=0.6):
    return json.dumps({"pp": 512, "tg": 128, "pl": pl, "n_kv": pl * 640, "t_pp": 0.4, "speed_pp": 10000.0 + pl,
                       "t_tg": t_tg, "speed_tg": speed_tg, "t": 0.4 + t_tg, "speed": 1.0})


BB_LINES = ["main: n_kv_max = 40960", _bb(1, 200.0), _bb(8, 1200.0), _bb(1, 210.0), _bb(8, 1280.0)]


def write_gguf(path: Path, tensors: list[tuple[str, int]]) -> None:
    """A minimal GGUF v3 file: one string KV pair and F32 tensors of the given element counts."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kv = s("general.architecture") + struct.pack("<I", 8) + s("llama")
    infos, off = b"", 0
    for name, n in tensors:
        infos += s(name) + struct.pack("<I", 1) + struct.pack("<Q", n) + struct.pack("<IQ", 0, off)
        off += -(-n * 4 // 32) * 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 1) + kv + infos
    path.write_bytes(head + b"\0" * ((-len(head)) % 32) + b"\0" * off)


TENSORS = [("token_embd.weight", 64), ("blk.0.attn_q.weight", 256), ("output_norm.weight", 8)]


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def fake_bin(d: Path, lb_lines=LB_LINES, bb_lines=BB_LINES, lb_rc=0, lb_err="", bb_rc=0, bb_err="") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "lb.out").write_text("\n".join(lb_lines) + "\n")
    (d / "bb.out").write_text("\n".join(bb_lines) + "\n")
    _script(d / "llama-bench", f'echo "$@" >> "{d}/lb.args"\ncat "{d}/lb.out"\necho "{lb_err}" >&2\nexit {lb_rc}\n')
    _script(d / "llama-batched-bench", f'echo "$@" >> "{d}/bb.args"\ncat "{d}/bb.out"\necho "{bb_err}" >&2\n'
                                       f"exit {bb_rc}\n")
    # llama-quantize SRC DST TYPE NTHREADS: IQ4_XS needs an importance matrix, every other type is a copy
    _script(d / "llama-quantize", 'if [ "$3" = IQ4_XS ]; then echo "please provide an importance matrix (imatrix)" >&2;'
                                  ' exit 1; fi\ncp "$1" "$2"\n')
    return d


class FakeEnergy:
    ok = True

    def __init__(self, *a, **k):
        self.calls = []

    def start(self):
        pass

    def stop(self):
        pass

    def power(self, t0, t1, n=1):
        self.calls.append((t0, t1, n))
        return 400.0 * n


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(R, "gpu_facts", lambda: {"n_gpus": 1, "gpu_name": "NVIDIA H200", "gpu_uuid": "GPU-1",
                                                 "driver": "570.0", "cuda": "12.8", "nvidia_smi": "H200"})
    monkeypatch.setattr(R, "measure_peaks", lambda log: {"copy_bw_gbps": 4000.0, "peak_tflops_bf16": 700.0})
    monkeypatch.setattr(R, "EnergySampler", FakeEnergy)
    monkeypatch.setattr(files_mod.shutil, "disk_usage", lambda p: SimpleNamespace(free=10 ** 13, total=10 ** 13))

    def write_f16(self, cat, job):
        write_gguf(job.path, TENSORS)
        return "ok", "hand-written GGUF"

    monkeypatch.setattr(files_mod.Files, "_write_f16", write_f16)


def _args(tmp_path, **kw):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "VERSION.json").write_text(json.dumps({"llama_cpp_python": "0.3.36", "llama_cpp_commit": "abc1234",
                                                  "ggml": "0.25.3"}))
    a = dict(plan="unit", models="", budget=120.0, reserve=1.0, out=str(tmp_path / "out"),
             bin=str(tmp_path / "bin"), src=str(src), models_dir=str(tmp_path / "models"), source_id="call-7",
             commit="deadbeef", build_flags="", lookahead=4, wait_file="")
    a.update(kw)
    return SimpleNamespace(**a)


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "rows.csv")))


LB = {"kind": "lb", "p": [512], "n": [128], "d": [0], "kv": "f16", "reps": 3}
LB_HUGE = {"kind": "lb", "p": [512], "n": [10 ** 12], "d": [0], "kv": "q8_0", "reps": 3}  # estimated past the budget
BBENCH = {"kind": "bb", "npp": 512, "ntg": 128, "npl": [1, 8], "reps": 2, "kv": "f16"}


def test_runner_measures_every_step_and_deletes_files(tmp_path, monkeypatch, fakes):
    steps = [(MODEL, "F16", [LB, LB_HUGE]), (MODEL, "Q4_0", [BBENCH]), (MODEL, "IQ4_XS", [LB]),
             (MODEL, "Q8_0", [LB]), ("llama3.1-8b", "F16", [LB])]  # the last is filtered out by --models
    monkeypatch.setitem(R.PLANS, "unit", steps)
    real_facts = R.model_facts

    def facts(path, model, qtype):
        if qtype == "Q8_0":
            raise RuntimeError("boom")
        return real_facts(path, model, qtype)

    monkeypatch.setattr(R, "model_facts", facts)
    fake_bin(tmp_path / "bin")
    (tmp_path / "go").write_text("")
    r = R.Runner(_args(tmp_path, models=MODEL, wait_file=str(tmp_path / "go")))
    r.main()
    r.files.thread.join(10)
    out = tmp_path / "out"
    rows = _rows(out)
    assert {x["model"] for x in rows} == {MODEL}
    by = {}
    for x in rows:
        by.setdefault((x["gguf_type"], x["status"]), []).append(x)
    # F16, llama-bench: one decode row and one prefill row, the warm-up sample dropped
    f16 = {x["metric"]: x for x in by[("F16", "ok")]}
    assert set(f16) == {"decode_tok_s", "prefill_tok_s"}
    assert float(f16["decode_tok_s"]["value"]) == pytest.approx(228.6)
    assert float(f16["prefill_tok_s"]["value"]) == pytest.approx(10240.0)
    assert f16["decode_tok_s"]["n_reps"] == "3" and float(f16["decode_tok_s"]["avg_power_w"]) == 400.0
    assert "abc1234" in f16["decode_tok_s"]["engine_version"] and f16["decode_tok_s"]["source_id"] == "call-7"
    assert f16["decode_tok_s"]["copy_bw_gbps"] == "4000.0" and f16["decode_tok_s"]["roofline_value"] != ""
    # Q4_0, batched-bench: (prefill, output, per-sequence decode) x 2 batch sizes; medians after the warm-up run
    q4 = {(x["metric"], x["batch"]): x for x in by[("Q4_0", "ok")]}
    assert len(q4) == 6
    assert float(q4[("output_tok_s", "8")]["value"]) == pytest.approx(1280.0)
    assert float(q4[("decode_tok_s", "8")]["value"]) == pytest.approx(160.0)
    # IQ4_XS: llama-quantize wants an imatrix -> one 'unsupported' row per benchmark of the step
    (iq,) = by[("IQ4_XS", "unsupported")]
    assert "imatrix" in iq["reason"] and iq["metric"] == "decode_tok_s"
    # Q8_0: the runner's exception becomes an error row, and the sweep goes on
    (q8,) = by[("Q8_0", "error")]
    assert q8["reason"] == "RuntimeError: boom"
    assert len(rows) == 2 + 6 + 1 + 1
    # raw records: 2 llama-bench + 4 batched-bench lines
    raw = [json.loads(x) for x in (out / "raw_bench.jsonl").read_text().splitlines()]
    assert [x["tool"] for x in raw].count("llama-bench") == 2 and len(raw) == 6
    env = json.loads((out / "env.json").read_text())
    assert env["plan"] == "unit" and env["copy_bw_gbps"] == 4000.0 and env["nvml_energy"] is True
    log = (out / "run.log").read_text()
    assert "deadline: skip" in log and "present; GPUs ours" in log and "rows written: 10" in log
    # llama-bench got the step's settings; the skipped q8_0 benchmark never ran
    lb_args = (tmp_path / "bin" / "lb.args").read_text()
    assert "-r 4" in lb_args and "-ctk f16" in lb_args and "q8_0" not in lb_args
    assert "-npl 1,8,1,8" in (tmp_path / "bin" / "bb.args").read_text()
    # every GGUF was deleted once no step needed it; the filtered-out model's file was never made
    assert not list((tmp_path / "models").glob("*.gguf"))
    assert not r.files.jobs.get(("llama3.1-8b", "F16"))


def _one_file_runner(tmp_path, busy):
    """A runner without NVML or a file thread, and one F16 GGUF of MODEL: (runner, job, facts)."""
    r = R.Runner(_args(tmp_path))
    r.ctx = {"n_gpus": 1, "source_id": "s", "copy_bw_gbps": 4000.0, "peak_tflops_bf16": 700.0}
    r.files = SimpleNamespace(busy=busy)
    r.energy = SimpleNamespace(ok=False)
    gg = tmp_path / f"{MODEL}-F16.gguf"
    write_gguf(gg, TENSORS)
    return r, SimpleNamespace(model=MODEL, qtype="F16", path=gg), R.model_facts(gg, MODEL, "F16")


def test_failed_benchmarks_become_status_rows(tmp_path, fakes):
    b = fake_bin(tmp_path / "bin", lb_lines=LB_LINES[:2], lb_rc=1, lb_err="CUDA error: out of memory",
                 bb_rc=3, bb_err="GGML_ASSERT failed")
    r, job, facts = _one_file_runner(tmp_path, busy=True)
    r.run_lb(job, facts, dict(LB, env={"GGML_CUDA_DISABLE_GRAPHS": "1"}, notes="diagnostic"))
    r.run_bb(job, facts, BBENCH)
    rows = _rows(tmp_path / "out")
    st = [(x["metric"], x["status"]) for x in rows]
    assert st[0] == ("decode_tok_s", "ok") and st[1] == ("", "does_not_fit")
    assert rows[0]["cpu_job_concurrent"] == "1" and rows[0]["avg_power_w"] == ""  # no NVML: no power
    assert rows[0]["notes"].endswith("diagnostic") and rows[0]["location"].endswith(
        "GGML_CUDA_DISABLE_GRAPHS=1 llama-bench -p 512 -n 128 -d 0 -r 4 -fa 1 -ngl 99 -ctk f16 -ctv f16 "
        f"-t {len(r.bench_cores)} -sm none -o jsonl") and str(tmp_path) not in rows[0]["location"]
    assert "rc=1 after 1 rows" in rows[1]["reason"] and "out of memory" in rows[1]["reason"]
    # batched-bench failed after its records: the rows still come, then one error row
    assert [x["status"] for x in rows[2:]] == ["ok"] * 6 + ["error"]
    assert "llama-batched-bench rc=3 after 4 records" in rows[-1]["reason"] and "GGML_ASSERT" in rows[-1]["reason"]
    assert "-c 5120" in (b / "bb.args").read_text()  # max(npl) x (npp + ntg)


def test_run_proc_kills_a_process_past_its_timeout(tmp_path):
    _script(tmp_path / "slow", "echo first\nexec sleep 30\n")
    r = R.Runner(_args(tmp_path))
    seen = []
    rc, tail, timed_out = r.run_proc([str(tmp_path / "slow")], 0.5, lambda line, t: seen.append(line.strip()))
    assert seen == ["first"] and rc == -9 and timed_out


def test_model_facts_from_the_tensor_table(tmp_path):
    from profiles import load

    p = tmp_path / "m.gguf"
    write_gguf(p, TENSORS)
    f = R.model_facts(p, MODEL, "Q4_0")
    llm = load().llm(MODEL)
    assert f.tensor_bytes == 64 * 4 + 256 * 4 + 32 and f.embd_bytes == 256 and f.file_bytes == p.stat().st_size
    assert f.tied is True and f.layers == llm.num_hidden_layers and f.kv_heads == llm.num_key_value_heads
    assert f.head_dim == llm.hidden_size // llm.num_attention_heads


def test_estimate_grows_with_work():
    f = ModelFacts(model=MODEL, qtype="F16", file_bytes=int(2.5e9), tensor_bytes=int(2.5e9), embd_bytes=int(5e8),
                   tied=True, n_params=int(1.24e9), block_params=int(9.7e8), head_params=0, layers=16, heads=32,
                   head_dim=64, kv_heads=8)
    small = R.estimate_s(BBENCH, f)
    load = 4 + 2.5e9 / 4e9
    assert small > load + 2  # load + batched-bench start
    assert R.estimate_s(dict(BBENCH, npl=[1, 8, 64]), f) > small
    assert R.estimate_s(dict(BBENCH, reps=4), f) > small
    lb = R.estimate_s(LB, f)
    assert R.estimate_s(dict(LB, sm=["none", "layer"]), f) - load == pytest.approx(2 * (lb - load))  # 2 split modes


def test_main_without_engine_binaries_writes_one_error_row(tmp_path, monkeypatch, fakes, capsys):
    monkeypatch.setitem(R.PLANS, "unit", [(MODEL, "F16", [LB])])
    a = _args(tmp_path)
    (tmp_path / "bin").mkdir()
    argv = ["--plan", "unit", "--budget", "25", "--reserve", "1", "--out", a.out, "--bin", a.bin, "--src", a.src,
            "--models-dir", a.models_dir, "--source-id", "call-9", "--models", "llama3.1-8b"]  # no step left
    R.main(argv)
    rows = _rows(Path(a.out))
    assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["reason"] == "engine build missing or failed"
    assert rows[0]["source_id"] == "call-9" and rows[0]["location"] == "build"
    assert "nothing measured" in capsys.readouterr().out


def test_main_stops_at_the_deadline(tmp_path, monkeypatch, fakes):
    monkeypatch.setitem(R.PLANS, "unit", [(MODEL, "F16", [LB])])
    fake_bin(tmp_path / "bin")
    a = _args(tmp_path, budget=5.0, reserve=1.0)
    r = R.Runner(a)
    r.main()
    r.files.thread.join(5)  # under 20 s left: the producer writes no file either
    assert r.files.jobs[(MODEL, "F16")].reason == "deadline before the file was made"
    assert not (Path(a.out) / "rows.csv").read_text().strip().splitlines()[1:]  # header only
    assert "deadline: stop with 1 steps left" in (Path(a.out) / "run.log").read_text()



def test_a_step_without_flash_attention_says_so_in_its_rows(tmp_path, fakes):
    fake_bin(tmp_path / "bin")
    r, job, facts = _one_file_runner(tmp_path, busy=False)
    r.run_lb(job, facts, dict(LB, fa="0"))
    r.run_lb(job, facts, LB)
    rows = _rows(tmp_path / "out")
    off = [x for x in rows if x["flash_attn"] == "off"]
    on = [x for x in rows if x["flash_attn"] == "on"]
    assert off and on and len(off) + len(on) == len(rows)
    assert all(" -fa 0 " in x["location"] and "flash attention off" in x["notes"] for x in off)
    assert all(" -fa 1 " in x["location"] and "flash attention on" in x["notes"] for x in on)
