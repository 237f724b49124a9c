"""Device runner: one call = write GGUFs, quantize, measure, each step under a deadline.

    python3 -m measurement.llamacpp.run --plan smoke --budget 330 --out $OUT \
        --bin /tmp/lcpp/bin --src /tmp/lcpp/src --source-id CALL_ID --commit SHA

Every result is appended to ``$OUT/rows.csv`` the moment it exists; raw llama-bench / batched-bench
lines go to ``$OUT/raw_bench.jsonl`` (one JSON object a line, with the model, type and arrival time), the
log to ``$OUT/run.log``, the machine facts to ``$OUT/env.json``.

Files: a producer thread writes each model's F16 GGUF (gguf-py) and quantizes it (llama-quantize) on the
cores the benchmarks do not use, at most ``--lookahead`` files ahead of the benchmarks and only while the
disk has room; a file is deleted as soon as no pending step needs it. Benchmarks run pinned to cores
0-3 (``cpu_job_concurrent`` says whether a producer job was running during the row's measurement).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import threading
import time
import traceback
from pathlib import Path

from .bench import (Deadline, ModelFacts, RowWriter, batched_rows, gpus_used, make_row,
                    parse_batched_bench_line, parse_llama_bench_record, status_row)
from .build import BUILD_FLAGS, engine_version_string, version_info
from .files import Files
from .gguf_arch import arch_spec, read_tensor_table
from .machine import EnergySampler, gpu_facts, measure_peaks
from .plans import PLANS


# --------------------------------------------------------------------------------------------- facts
def model_facts(path: Path, model: str, qtype: str) -> ModelFacts:
    from profiles import load
    llm = load().llm(model)
    spec = arch_spec(llm)
    tt = read_tensor_table(path)["tensors"]
    tb = sum(t["bytes"] for t in tt.values())
    eb = tt["token_embd.weight"]["bytes"]
    hd = llm.head_dim or llm.hidden_size // llm.num_attention_heads
    return ModelFacts(model=model, qtype=qtype, file_bytes=path.stat().st_size, tensor_bytes=tb, embd_bytes=eb,
                      tied=spec.tied, n_params=spec.n_params, block_params=spec.layer_params,
                      head_params=spec.output_params, layers=llm.num_hidden_layers, heads=llm.num_attention_heads,
                      head_dim=hd, kv_heads=llm.num_key_value_heads)


def estimate_s(bench: dict, f: ModelFacts, bw=4.0e12, peak=5e14) -> float:
    """Rough seconds for one benchmark invocation (load + all repetitions + warm-up)."""
    load = 4 + f.file_bytes / 4e9
    tg_tok_s = 0.6 * bw / f.weight_bytes_read
    pp_tok_s = 0.5 * peak / (2 * f.block_params)
    if bench["kind"] == "lb":
        runs = (bench.get("reps", 5) + 1) * len(bench.get("sm", ["none"]))
        t = 0.0
        for d in bench["d"]:
            for p in bench["p"]:
                t += runs * p / pp_tok_s * (1 + d / 8192)
            for n in bench["n"]:
                t += runs * n / tg_tok_s * (1 + d / 16384)
            t += d / pp_tok_s
        return load + t
    tot = 0.0
    for pl in bench["npl"]:
        tot += pl * bench["npp"] / pp_tok_s + bench["ntg"] * (f.weight_bytes_read / (0.6 * bw)) * (1 + pl / 16)
    return load + 2 + tot * bench["reps"]


# --------------------------------------------------------------------------------------------- runner
class Runner:
    def __init__(self, a):
        self.a = a
        self.out = Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.logf = open(self.out / "run.log", "a")
        self.rows = RowWriter(self.out / "rows.csv")
        self.rawf = open(self.out / "raw_bench.jsonl", "a")
        self.deadline = Deadline(a.budget, reserve_s=a.reserve)
        self.bin, self.src = Path(a.bin), Path(a.src)
        ncpu = os.cpu_count() or 8
        self.bench_cores = set(range(0, min(4, ncpu)))
        self.prod_cores = set(range(min(4, ncpu - 1), ncpu)) or None
        self.counts = {}

    def log(self, msg):
        line = f"[{self.deadline.elapsed():7.1f}s] {msg}"
        print(line, flush=True)
        self.logf.write(line + "\n")
        self.logf.flush()

    def raw(self, obj):
        self.rawf.write(json.dumps(obj) + "\n")
        self.rawf.flush()

    def emit(self, row):
        self.rows.write(row)
        k = (row["model"], row["gguf_type"], row["status"])
        self.counts[k] = self.counts.get(k, 0) + 1

    def ctx_for(self, model, qtype, command):
        c = dict(self.ctx)
        c.update(model=model, qtype=qtype, command=command)
        return c

    def run_proc(self, cmd, timeout, on_line, env=None):
        """Run pinned to the bench cores; on_line(line, t_arrival) for each stdout line; returns (rc, tail)."""
        self.log("$ " + " ".join(f"{k}={v}" for k, v in (env or {}).items()) + " " + " ".join(cmd))
        errp = Path("/tmp/lcpp_proc_stderr.txt")
        with open(errp, "w") as ef:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=ef, text=True, bufsize=1,
                                 env=dict(os.environ, **(env or {})),
                                 preexec_fn=lambda: os.sched_setaffinity(0, self.bench_cores))
            timer = threading.Timer(timeout, p.kill)
            timer.start()
            try:
                for line in p.stdout:
                    on_line(line, time.time())
                rc = p.wait()
            finally:
                timer.cancel()
        err = errp.read_text(errors="replace")
        self.logf.write(err[-4000:] + "\n")
        self.logf.flush()
        timed_out = rc in (-9, 137) and self.deadline.remaining() >= 0
        return rc, err[-1500:], timed_out

    def run_lb(self, job, facts, bench):
        reps = bench.get("reps", 5)
        kv = bench["kv"]
        cmd = [str(self.bin / "llama-bench"), "-m", str(job.path), "-p", ",".join(map(str, bench["p"])),
               "-n", ",".join(map(str, bench["n"])), "-d", ",".join(map(str, bench["d"])), "-r", str(reps + 1),
               "-fa", bench.get("fa", "1"), "-ngl", "99", "-ctk", kv, "-ctv", kv, "-t", str(len(self.bench_cores)),
               "-sm", ",".join(bench.get("sm", ["none"])), "-o", "jsonl"]
        env = bench.get("env") or {}
        command = (" ".join(f"{k}={v}" for k, v in env.items()) + " llama-bench "
                   + " ".join(cmd[3:]).replace(str(job.path), job.path.name)).strip()
        ctx = self.ctx_for(job.model, job.qtype, command)
        ctx["flash_attn"] = "off" if bench.get("fa", "1") == "0" else "on"
        if bench.get("notes") or ctx["flash_attn"] == "off":
            ctx["notes"] = "; ".join(x for x in (f"random weights; flash attention {ctx['flash_attn']}; -ngl 99",
                                                 bench.get("notes")) if x)
        got = [0]

        def on_line(line, t):
            line = line.strip()
            if not line.startswith("{"):
                return
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                return
            self.raw({"tool": "llama-bench", "model": job.model, "qtype": job.qtype, "t_arrival": t,
                      "source_id": self.a.source_id, "record": rec})
            cpu_job = self.files.busy
            for m in parse_llama_bench_record(rec):
                n = gpus_used(m.split, self.ctx.get("n_gpus", 1))
                pw = self.energy.power(t - m.window_s, t, n) if self.energy.ok and m.window_s > 0.2 else None
                self.emit(make_row(m, facts, ctx, avg_power_w=pw, cpu_job=cpu_job))
                got[0] += 1

        est = estimate_s(bench, facts)
        rc, tail, to = self.run_proc(cmd, self.deadline.timeout_for(est), on_line, env=env)
        if rc != 0:
            st = "does_not_fit" if ("out of memory" in tail.lower() or "failed to allocate" in tail.lower()) else "error"
            self.emit(status_row(ctx, st, f"llama-bench rc={rc}{' (timeout)' if to else ''} after {got[0]} rows: "
                                 + " ".join(tail.split()[-30:])))
        self.log(f"  llama-bench {job.model} {job.qtype} kv={kv}: {got[0]} rows rc={rc}")

    def run_bb(self, job, facts, bench):
        kv = bench["kv"]
        npl = bench["npl"] * bench["reps"]
        ctx_len = max(bench["npl"]) * (bench["npp"] + bench["ntg"])
        cmd = [str(self.bin / "llama-batched-bench"), "-m", str(job.path), "-c", str(ctx_len), "-b", "2048",
               "-ub", "512", "-npp", str(bench["npp"]), "-ntg", str(bench["ntg"]), "-npl", ",".join(map(str, npl)),
               "-ngl", "99", "-fa", "on", "-ctk", kv, "-ctv", kv, "-t", str(len(self.bench_cores)),
               "-sm", bench.get("sm", "none"), "--output-format", "jsonl"]
        n_gpu = gpus_used(bench.get("sm", "none"), self.ctx.get("n_gpus", 1))
        command = "llama-batched-bench " + " ".join(cmd[3:]).replace(str(job.path), job.path.name)
        ctx = self.ctx_for(job.model, job.qtype, command)
        recs = []

        def on_line(line, t):
            r = parse_batched_bench_line(line)
            if not r:
                return
            r["t_arrival"] = t
            r["power_tg"] = self.energy.power(t - r["t_tg"], t, n_gpu) if self.energy.ok and r["t_tg"] > 0.2 else None
            r["power_pp"] = (self.energy.power(t - r["t"], t - r["t_tg"], n_gpu)
                             if self.energy.ok and r["t"] - r["t_tg"] > 0.2 else None)
            r["cpu_job"] = self.files.busy
            recs.append(r)
            self.raw({"tool": "llama-batched-bench", "model": job.model, "qtype": job.qtype,
                      "source_id": self.a.source_id, "record": r})

        est = estimate_s(bench, facts)
        rc, tail, to = self.run_proc(cmd, self.deadline.timeout_for(est), on_line)
        n = self.write_bb_rows(recs, facts, ctx, kv, bench.get("sm", "none"))
        if rc != 0:
            st = "does_not_fit" if ("out of memory" in tail.lower() or "failed to allocate" in tail.lower()) else "error"
            self.emit(status_row(ctx, st, f"llama-batched-bench rc={rc}{' (timeout)' if to else ''} after "
                                 f"{len(recs)} records: " + " ".join(tail.split()[-30:])))
        self.log(f"  batched-bench {job.model} {job.qtype}: {len(recs)} records -> {n} rows rc={rc}")

    def write_bb_rows(self, recs, facts, ctx, kv, split="none"):
        n = 0
        for m in batched_rows(recs, kv=kv, split=split):
            self.emit(make_row(m, facts, ctx))
            n += 1
        return n

    def main(self):
        a = self.a
        self.log(f"plan {a.plan}, budget {a.budget}s, out {self.out}")
        info = version_info(self.src)
        g = gpu_facts()
        now = dt.datetime.now(dt.timezone.utc)
        self.ctx = {"engine_version": engine_version_string(info), "build_flags": a.build_flags or BUILD_FLAGS,
                    "source_id": a.source_id, "commit": a.commit, "date": now.strftime("%Y-%m-%d"),
                    "date_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "n_gpus": g.get("n_gpus", 1),
                    **{k: g.get(k, "") for k in ("gpu_name", "gpu_uuid", "driver", "cuda")}}
        steps = PLANS[a.plan]
        if a.models:
            steps = [s for s in steps if s[0] in a.models.split(",")]
        root = Path(a.models_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.files = Files(steps, root, self.bin, self.src, self.log, lookahead=a.lookahead,
                           prod_cores=self.prod_cores, deadline=self.deadline)
        self.files.thread.start()
        self.energy = EnergySampler()
        self.energy.start()
        if a.wait_file:  # the GPUs belong to another sweep until it writes this file
            while not Path(a.wait_file).exists() and self.deadline.remaining() > a.reserve + 30:
                time.sleep(1)
            self.log(f"{a.wait_file}: {'present' if Path(a.wait_file).exists() else 'absent'}; GPUs ours")
        try:
            self.ctx.update(measure_peaks(self.log))
        except Exception as e:
            self.log(f"peaks failed: {e}")
        env = dict(self.ctx, versions=info, disk_free_gb=shutil.disk_usage(root).free / 1e9, nvml_energy=self.energy.ok,
                   ncpu=os.cpu_count(), nvidia_smi=g.get("nvidia_smi"), plan=a.plan)
        (self.out / "env.json").write_text(json.dumps(env, indent=1))
        self.wait_for_bin()
        if not (self.bin / "llama-bench").exists():
            self.log(f"no engine binaries at {self.bin}: nothing measured")
            self.emit(status_row(self.ctx_for("", "", "build"), "error", "engine build missing or failed"))
            steps = []
        pending = list(enumerate(steps))
        while pending:
            if self.deadline.remaining() < a.reserve + 10:
                self.log(f"deadline: stop with {len(pending)} steps left: {[p[1][:2] for p in pending]}")
                break
            # the first step in priority order whose file is ready (or failed)
            pick = next((p for p in pending if self.files.jobs[p[1][:2]].ready.is_set()), None)
            if pick is None:
                time.sleep(0.2)
                continue
            pending.remove(pick)
            i, (model, qtype, benches) = pick
            k = (model, qtype)
            job = self.files.jobs[k]
            self.files.consumed = max(self.files.consumed, self.files.order.index(k))
            try:
                if job.status != "ok":
                    for b in benches:
                        ctx = self.ctx_for(model, qtype, f"llama-quantize {qtype}")
                        self.emit(status_row(ctx, job.status, job.reason,
                                             metric="decode_tok_s" if b["kind"] == "lb" else "output_tok_s"))
                    continue
                facts = model_facts(job.path, model, qtype)
                for b in benches:
                    est = estimate_s(b, facts)
                    if not self.deadline.allows(est):
                        self.log(f"deadline: skip {k} {b['kind']} kv={b['kv']} (est {est:.0f}s, "
                                 f"left {self.deadline.remaining():.0f}s)")
                        continue
                    t0 = time.time()
                    (self.run_lb if b["kind"] == "lb" else self.run_bb)(job, facts, b)
                    self.log(f"  took {time.time() - t0:.1f}s (est {est:.0f}s); left {self.deadline.remaining():.0f}s")
            except Exception as e:
                self.log(traceback.format_exc())
                self.emit(status_row(self.ctx_for(model, qtype, "runner"), "error", f"{type(e).__name__}: {e}"))
            finally:
                self.files.release(k)
        self.files.stop = True
        self.energy.stop()
        self.summary()

    def wait_for_bin(self):
        """Until the engine is built (device.sh links --bin to it), it failed (device.sh leaves BUILD_FAILED beside
        the link), or the deadline is near."""
        lb, failed = self.bin / "llama-bench", self.bin.parent / "BUILD_FAILED"
        while not lb.exists() and not failed.exists() and self.deadline.remaining() > 30:
            time.sleep(1)

    def summary(self):
        self.log(f"rows written: {self.rows.n}")
        for (m, q, s), n in sorted(self.counts.items()):
            self.log(f"  {m:14s} {q:8s} {s:12s} {n}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True, choices=sorted(PLANS))
    ap.add_argument("--models", default="")
    ap.add_argument("--budget", type=float, required=True)
    ap.add_argument("--reserve", type=float, default=12.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--models-dir", default="/tmp/lcpp_models")
    ap.add_argument("--source-id", default="")
    ap.add_argument("--commit", default="")
    ap.add_argument("--build-flags", default="")
    ap.add_argument("--lookahead", type=int, default=4)
    ap.add_argument("--wait-file", default="", help="write files at once, but touch no GPU until this file exists")
    a = ap.parse_args(argv)
    Runner(a).main()


if __name__ == "__main__":
    main()
