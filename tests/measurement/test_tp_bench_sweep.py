"""measurement.tp_bench's sweep without a GPU: torch (CUDA streams, graphs, memory queries, NCCL) is faked,
as are the decoder, the weights, NVML, the event timer and the clock, so that every row is known in
advance. What is checked: the all-reduce rows (graph-captured and eager fallback, bus bandwidth), the
decode and prefill rows of a model (CUDA graph or eager after a failed capture, the energy window,
J/token from the ranks' power, roofline, memory), out of memory, prefill above the token cap, fp8
weights, refusals (heads that do not split, weights that do not fit), the deadline, rank 1 writing
nothing, and main()'s run with its CSV appended on a rerun."""
from __future__ import annotations

import csv
import sys
import types
from contextlib import contextmanager
from types import SimpleNamespace as NS

import pytest

import measurement.roofline as RF
from measurement import tp_bench as TB
from measurement.testing import SizedTensor
from measurement.tp import shard_plan
from profiles import load

STEP_MS = 5.0  # every timed call of the fake event timer


class OOM(RuntimeError):
    pass


class State:
    def __init__(self):
        self.captures = 0          # graph captures attempted
        self.fail_captures = set()  # which of them fail (1-based)
        self.replays = {}          # capture number -> replays
        self.free = 140e9          # free GPU memory per rank
        self.inits = []
        self.decoders = []
        self.fp8_calls = []


def _fake_torch(st: State):
    t = types.ModuleType("torch")
    t.__version__ = "2.9.0+fake"
    t.bfloat16, t.long = "bf16", "long"
    t.OutOfMemoryError = OOM
    t.device = lambda kind, index=0: NS(type=kind, index=index)
    t.randn = t.randint = t.full = lambda *a, **k: NS(args=a)
    t.arange = lambda n, device=None: NS(n=n)

    class Graph:
        def __init__(self):
            self.n = None

        def replay(self):
            st.replays[self.n] += 1

    @contextmanager
    def graph(g):
        st.captures += 1
        if st.captures in st.fail_captures:
            raise RuntimeError("operation not permitted when stream is capturing")
        g.n = st.captures
        st.replays[g.n] = 0
        yield

    @contextmanager
    def stream(s):
        yield

    stream_obj = NS(wait_stream=lambda other: None)
    t.cuda = NS(set_device=lambda i: None, nccl=NS(version=lambda: (2, 21, 5)),
                get_device_name=lambda dev: "NVIDIA H200", mem_get_info=lambda dev: (st.free, 141e9),
                reset_peak_memory_stats=lambda dev: None, max_memory_allocated=lambda dev: 3e9,
                Stream=lambda: stream_obj, current_stream=lambda: stream_obj, stream=stream, CUDAGraph=Graph,
                graph=graph, synchronize=lambda: None, empty_cache=lambda: None)

    dist = types.ModuleType("torch.distributed")
    dist.group = NS(WORLD="world-group")
    dist.init_process_group = lambda backend, device_id=None: st.inits.append((backend, device_id.index))
    dist.barrier = lambda: None
    dist.all_reduce = lambda x, group=None: x

    def all_gather_object(out, obj):  # every rank reports what this one does
        out[:] = [obj] * len(out)

    dist.all_gather_object = all_gather_object
    t.distributed = dist
    return t, dist



class Decoder:
    """Records its forward calls; new caches of ``oom_tokens`` tokens or more do not fit."""

    oom_tokens = 64 * 4096
    fail_prefill = False

    def __init__(self, llm, plan, w, *, group=None, rank=0, max_pos=8192, fp8=False):
        self.llm, self.plan, self.group, self.rank, self.max_pos, self.fp8 = llm, plan, group, rank, max_pos, fp8
        self.forwards = 0
        self.st.decoders.append(self)

    def new_caches(self, batch, ctx, *, random=False):
        if batch * ctx >= self.oom_tokens:
            raise OOM("CUDA out of memory. Tried to allocate 8.00 GiB")
        return [("k", "v")]

    def forward(self, ids, pos, caches, slot=None, last_only=True):
        self.forwards += 1
        if slot is None and self.fail_prefill:
            raise ValueError("shapes do not match")


class Energy:
    """An NVML counter that gains 0.1 J per read: with the clock's 1 ms per call, 100 W."""

    def __init__(self, index):
        self.j = 1000.0

    def read_j(self):
        self.j += 0.1
        return self.j


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def time(self):
        self.now += 0.001
        return self.now


@pytest.fixture
def env(monkeypatch, tmp_path):
    st = State()
    torch, dist = _fake_torch(st)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.distributed", dist)
    monkeypatch.setattr(RF, "measure_peaks", lambda: {"copy_bw_gbps": 4000.0, "matmul_tflops_bf16": 800.0,
                                                      "matmul_tflops_fp8": 1600.0})
    monkeypatch.setattr(TB, "_events_ms", lambda fn, iters, warm=3: [(fn(), STEP_MS)[1] for _ in range(iters)])
    monkeypatch.setattr(TB, "Energy", Energy)
    monkeypatch.setattr(TB, "interconnect", lambda: "NV18")
    monkeypatch.setattr(TB, "_driver", lambda: "570.124.06")
    monkeypatch.setattr(TB, "time", Clock())

    def shard(llm, tp, *, device, dtype, layers=None):
        p = shard_plan(llm, tp)
        return {"embed": SizedTensor(p.vocab * p.hidden, 2), "layers": SizedTensor(p.params - p.vocab * p.hidden, 2)}

    def fp8(w, layers):
        st.fp8_calls.append(layers)
        return {k: SizedTensor(v.n, 1) for k, v in w.items()}

    monkeypatch.setattr(TB, "random_shard", shard)
    monkeypatch.setattr(TB, "to_fp8", fp8)
    monkeypatch.setattr(TB, "Decoder", type("Decoder", (Decoder,), {"st": st}))
    benches = []

    class Bench(TB.Bench):
        def __init__(self, a):
            super().__init__(a)
            benches.append(self)

    monkeypatch.setattr(TB, "Bench", Bench)
    yield NS(st=st, benches=benches, out=tmp_path / "tp")
    for b in benches:
        if b.rank == 0:
            b.fh.close()
            b.logf.close()


def _args(out, **kw):
    a = dict(models="llama3.1-8b", precisions="bf16", batches=[1, 64], contexts=[512, 4096], prefill_batches=[1, 4],
             max_prefill_tokens=4096, allreduce_tokens=[1, 2048], budget=1e6, out=str(out), source_id="call-9",
             commit="abc123")
    a.update(kw)
    return NS(**a)


def _rows(out):
    return list(csv.DictReader(open(out / "tp_rows.csv")))


def _ranks(monkeypatch, world, rank=0):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def test_two_gpu_allreduce_and_model_sweep(env, monkeypatch):
    _ranks(monkeypatch, 2)
    st = env.st
    st.fail_captures = {2, 4}  # the 2048-token all-reduce, and decode at batch 64 / context 512
    b = TB.Bench(_args(env.out))
    assert st.inits == [("nccl", 0)] and b.world == 2 and b.dist is not None
    assert b.base["engine_version"] == "torch 2.9.0+fake, NCCL 2.21.5" and b.base["interconnect"] == "NV18"
    assert b.base["gpu_name"] == "NVIDIA H200" and b.base["driver"] == "570.124.06"
    b.allreduce_sweep(4096, [1, 2048])
    b.model_sweep("llama3.1-8b", "bf16")
    rows = _rows(env.out)
    ar = [r for r in rows if r["metric"] == "allreduce_us"]
    # graph: 20 all-reduces per replay, 5 ms per replay -> 250 us; eager: 5 ms each
    assert [(r["batch"], r["value"], r["graphs"], r["msg_bytes"]) for r in ar] == [
        ("1", "250.000", "1", "8192"), ("2048", "5000.000", "0", str(2048 * 4096 * 2))]
    assert ar[0]["busbw_gbps"] == f"{8192 / 250e-6 / 1e9:.2f}"  # 2 GPUs: bus bandwidth = algorithm bandwidth
    assert ar[0]["num_gpus"] == "2" and ar[0]["source_id"] == "call-9" and ar[0]["commit"] == "abc123"

    got = [(r["metric"], r["prompt_len"], r["batch"], r["status"], r["graphs"]) for r in rows[2:]]
    assert got == [("decode_step_ms", "512", "1", "ok", "1"), ("decode_step_ms", "512", "64", "ok", "0"),
                   ("prefill_ms", "512", "1", "ok", "0"), ("prefill_ms", "512", "4", "ok", "0"),
                   ("decode_step_ms", "4096", "1", "ok", "1"), ("decode_step_ms", "4096", "64", "does_not_fit", ""),
                   ("prefill_ms", "4096", "1", "ok", "0")]  # batch 4 x 4096 is above the 4096-token cap
    d = rows[2]
    plan = shard_plan(load().llm("llama3.1-8b"), 2)
    assert d["parallel"] == "tp" and d["model"] == "llama3.1-8b" and d["value"] == f"{STEP_MS:.4f}"
    assert d["samples"] == " ".join([f"{STEP_MS:.4f}"] * 30) and d["msg_bytes"] == str(plan.allreduce_bytes(1))
    assert d["power_w_per_gpu"] == "100.0 100.0" and d["mem_gb_per_gpu"] == "3.00"
    assert float(d["j_per_token"]) == pytest.approx(200 * STEP_MS / 1000, rel=1e-6)  # 2 x 100 W x 5 ms, 1 token
    wbytes = plan.params * 2
    roof = (wbytes + 512 * plan.kv_bytes_per_token()) / 4000e9 * 1000
    assert d["roofline_bound"] == "memory" and float(d["roofline_value"]) == pytest.approx(roof, rel=1e-3)
    assert float(d["roofline_frac"]) == pytest.approx(roof / STEP_MS, abs=1e-3)
    assert f"{2 * plan.layers + 1} all-reduces" in d["notes"]
    # energy window: >= 0.5 s of replays (100 x 5 ms) after the 30 timed ones, on the captured graph
    assert st.replays[3] == 30 + 100 and st.replays[5] == 30 + 100
    p = rows[4]
    assert p["gen_len"] == "0" and float(p["j_per_token"]) == pytest.approx(200 * STEP_MS / 1000 / 512, rel=1e-3)
    assert p["msg_bytes"] == str(plan.allreduce_bytes(512)) and p["roofline_bound"] in ("memory", "compute")
    oom = rows[7]
    assert oom["reason"].startswith("OOM: CUDA out of memory") and oom["value"] == ""
    dec = st.decoders[0]
    assert dec.group == "world-group" and dec.max_pos == 4096 + 16 and not dec.fp8
    # captured decode: 2 warm-up + 1 captured forward (then replays); eager after the failed capture: 2 warm-up
    # + 30 timed + 100 energy-window forwards; prefill: 3 timed; the decode that did not fit: none
    assert dec.forwards == 3 + (2 + 30 + 100) + 3 + 3 + 3 + 0 + 3
    log = (env.out / "tp_run.log").read_text()
    assert "all-reduce graph capture failed (RuntimeError" in log and "decode graph capture failed" in log
    assert "decode_step_ms B=64 ctx=4096: OOM" in log


def test_fp8_weights_and_refusals(env, monkeypatch):
    _ranks(monkeypatch, 1)
    st = env.st
    b = TB.Bench(_args(env.out, contexts=[512], batches=[8], prefill_batches=[2]))
    monkeypatch.setattr(Decoder, "fail_prefill", True)
    assert st.inits == [] and b.dist is None and b.base["interconnect"] == ""
    b.allreduce_sweep(4096, [1])  # one GPU: nothing to all-reduce
    b.model_sweep("llama3.1-8b", "fp8")
    plan = shard_plan(load().llm("llama3.1-8b"), 1)
    assert st.fp8_calls == [plan.layers] and st.decoders[-1].fp8 and st.decoders[-1].group is None
    st.free = 20e9  # 70B in 16 bit: 141 GB of weights
    b.model_sweep("llama3.1-70b", "bf16")
    rows = _rows(env.out)
    assert [(r["model"], r["precision"], r["metric"], r["status"]) for r in rows] == [
        ("llama3.1-8b", "fp8", "decode_step_ms", "ok"), ("llama3.1-8b", "fp8", "prefill_ms", "error"),
        ("llama3.1-70b", "bf16", "decode_step_ms", "does_not_fit")]
    fp8 = rows[0]
    assert fp8["parallel"] == "none" and fp8["num_gpus"] == "1" and fp8["batch"] == "8"
    wbytes = plan.params  # one byte per weight
    flops = 2 * plan.matmul_params * 8 + 8 * 4 * 512 * plan.layers * plan.q_heads * plan.head_dim
    roof = 1000 * max((wbytes + 8 * 512 * plan.kv_bytes_per_token()) / 4000e9, flops / 1600e12)
    assert float(fp8["roofline_value"]) == pytest.approx(roof, rel=1e-3)
    assert float(fp8["j_per_token"]) == pytest.approx(100 * STEP_MS / 1000 / 8, rel=1e-3)
    assert rows[1]["reason"] == "ValueError: shapes do not match" and rows[1]["batch"] == "2"
    assert "GB of weights per GPU at 1 GPU(s); 20.0 GB free" in rows[2]["reason"]
    assert "does not fit" in (env.out / "tp_run.log").read_text()


def test_three_gpus_do_not_split_32_heads_and_the_deadline_stops_a_model(env, monkeypatch):
    _ranks(monkeypatch, 3)
    b = TB.Bench(_args(env.out, budget=24.0))
    b.model_sweep("llama3.1-8b", "bf16")
    (r,) = _rows(env.out)
    assert (r["status"], r["num_gpus"], r["parallel"]) == ("unsupported", "3", "tp")
    assert "32 attention heads do not split over 3 GPUs" in r["reason"]
    _ranks(monkeypatch, 2)
    b = TB.Bench(_args(env.out, budget=24.0))  # appends to the same file: no second header
    b.model_sweep("llama3.1-8b", "bf16")
    b.close()
    assert len(_rows(env.out)) == 1 and "deadline: stop" in (env.out / "tp_run.log").read_text()
    assert open(env.out / "tp_rows.csv").read().count("engine,engine_version") == 1
    assert env.st.decoders[-1].forwards == 0  # weights made, nothing measured


def test_rank1_measures_but_writes_nothing(env, monkeypatch):
    _ranks(monkeypatch, 2, rank=1)
    b = TB.Bench(_args(env.out, contexts=[512], batches=[1], prefill_batches=[1]))
    b.allreduce_sweep(4096, [1])
    b.model_sweep("llama3.1-8b", "bf16")
    b.close()
    assert st_forwards(env) > 0 and not env.out.exists()


def st_forwards(env):
    return sum(d.forwards for d in env.st.decoders)


def test_main_one_gpu(env, monkeypatch, capsys):
    _ranks(monkeypatch, 1)
    argv = ["--models", "llama3.1-8b,llama3.1-70b", "--batches", "1", "--contexts", "512", "--prefill-batches",
            "1", "--out", str(env.out), "--source-id", "call-9", "--commit", "abc", "--budget", "1e6"]
    env.st.free = 100e9
    assert TB.main(argv) == 0
    rows = _rows(env.out)
    assert [(r["model"], r["metric"], r["status"]) for r in rows] == [
        ("llama3.1-8b", "decode_step_ms", "ok"), ("llama3.1-8b", "prefill_ms", "ok"),
        ("llama3.1-70b", "decode_step_ms", "does_not_fit")]
    assert rows[0]["engine"] == "harness-tp" and rows[0]["gpu"] == "h200" and rows[0]["weights"] == "random"
    assert rows[0]["torch"] == "2.9.0+fake" and rows[0]["nccl"] == "2.21.5" and rows[0]["date_utc"].endswith("Z")
    assert rows[0]["power_w_per_gpu"] == "100.0"
    # too little time left: no model starts; the rows of the first run stay, no header is repeated
    assert TB.main(argv[:-1] + ["29"]) == 0
    assert len(_rows(env.out)) == 3
    log = (env.out / "tp_run.log").read_text()
    assert log.count("done in") == 2 and "rank 0/1" in log and "done in" in capsys.readouterr().out
