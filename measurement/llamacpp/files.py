"""GGUF files for a device run: a producer thread writes each model's F16 GGUF (gguf-py) and quantizes it
(llama-quantize) on the cores the benchmarks do not use, at most ``lookahead`` files ahead of the benchmarks
and only while the disk has room; a file is deleted as soon as no pending step needs it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .gguf_arch import arch_spec


# --------------------------------------------------------------------------------------------- files
@dataclass
class FileJob:
    model: str
    qtype: str
    path: Path
    users: int = 0  # pending consumer steps
    derived: int = 0  # pending quant jobs from this (F16 only)
    ready: threading.Event = field(default_factory=threading.Event)
    status: str = ""  # ok / unsupported / error
    reason: str = ""
    seconds: float = 0.0
    deleted: bool = False


class Files:
    def __init__(self, steps, root: Path, binp: Path, src: Path, log, lookahead=2, prod_cores=None, deadline=None):
        self.root, self.bin, self.src, self.log = root, binp, src, log
        self.lookahead, self.prod_cores, self.deadline = lookahead, prod_cores, deadline
        self.jobs: dict[tuple, FileJob] = {}
        self._params: dict[str, int] = {}
        self.order: list[tuple] = []
        for m, q, _ in steps:
            k = (m, q)
            if k not in self.jobs:
                self.jobs[k] = FileJob(m, q, root / f"{m}-{q}.gguf")
                self.order.append(k)
            self.jobs[k].users += 1
        # F16 of each model first (source of the quants)
        for m, q in list(self.order):
            f16 = (m, "F16")
            if f16 not in self.jobs:
                self.jobs[f16] = FileJob(m, "F16", root / f"{m}-F16.gguf")
            if q != "F16":
                self.jobs[f16].derived += 1
        prod = []
        for k in self.order:
            f16 = (k[0], "F16")
            if f16 not in prod:
                prod.append(f16)
            if k not in prod:
                prod.append(k)
        self.prod_order = prod
        self.consumed = 0  # index into self.order of the step being consumed (files before it used)
        self.lock = threading.Lock()
        self.busy = False  # a producer job is running right now
        self.stop = False
        self.thread = threading.Thread(target=self._produce, daemon=True)

    def est_bytes(self, m, q):
        from profiles import load
        if m not in self._params:
            self._params[m] = arch_spec(load().llm(m)).n_params
        n = self._params[m]
        bpw = {"F16": 16, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q4_K_M": 4.9, "Q4_0": 4.6, "IQ4_XS": 4.4}.get(q, 16)
        return n * bpw / 8

    def _wait_room(self, k):
        while not self.stop:
            idx = self.order.index(k) if k in self.order else -1
            ahead_ok = idx < 0 or idx - self.consumed <= self.lookahead
            free = shutil.disk_usage(self.root).free
            need = self.est_bytes(*k) + 3e9
            if ahead_ok and free >= need:
                return True
            time.sleep(0.5)
        return False

    def _produce(self):
        from profiles import load
        cat = load()
        if self.prod_cores:
            try:
                os.sched_setaffinity(0, self.prod_cores)
            except Exception:
                pass
        for k in self.prod_order:
            job = self.jobs[k]
            # the deadline first: a run that stops at its deadline before this thread gets here (the main
            # loop can finish while the catalog loads) still says why each file was never made
            if self.deadline is not None and self.deadline.remaining() < 20:
                job.status, job.reason = "error", "deadline before the file was made"
                job.ready.set()
                continue
            if self.stop or not self._wait_room(k):
                break
            t0 = time.time()
            self.busy = True
            try:
                if job.qtype == "F16":
                    r = self._write_f16(cat, job)
                else:
                    r = self._quantize(job)
                job.status, job.reason = r
            except Exception as e:
                job.status, job.reason = "error", f"{type(e).__name__}: {e}"[:300]
                self.log(traceback.format_exc())
            finally:
                self.busy = False
            job.seconds = time.time() - t0
            self.log(f"file {k}: {job.status} {job.reason} in {job.seconds:.1f}s"
                     + (f", {job.path.stat().st_size / 1e9:.2f} GB" if job.path.exists() else ""))
            job.ready.set()
            if job.qtype != "F16":
                self._derived_done(job.model)
            self._maybe_delete(job)

    def _write_f16(self, cat, job):
        sys.path.insert(0, str(self.src / "gguf-py"))
        from .gguf_arch import write_gguf
        spec = arch_spec(cat.llm(job.model))
        tmp = job.path.with_suffix(".tmp")
        info = write_gguf(spec, tmp, self.src / "models")
        tmp.rename(job.path)
        return "ok", f"gguf-py wrote {info['params'] / 1e9:.3f}B params in {info['seconds']}s"

    def _quantize(self, job):
        f16 = self.jobs[(job.model, "F16")]
        f16.ready.wait()
        qbin = self.bin / "llama-quantize"
        while not qbin.exists() and not self.stop and (self.deadline is None or self.deadline.remaining() > 20):
            time.sleep(1)  # the build may still be running
        if f16.status != "ok":
            return "error", f"no F16 source: {f16.reason}"
        n = len(self.prod_cores) if self.prod_cores else (os.cpu_count() or 4)
        tmp = job.path.with_suffix(".tmp")
        cmd = [str(self.bin / "llama-quantize"), str(f16.path), str(tmp), job.qtype, str(n)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        tail = (p.stdout + p.stderr)[-1500:]
        if p.returncode != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)
            low = tail.lower()
            st = "unsupported" if ("imatrix" in low or "importance matrix" in low or "invalid" in low) else "error"
            return st, f"llama-quantize rc={p.returncode}: " + " ".join(tail.split()[-40:])
        tmp.rename(job.path)
        return "ok", f"llama-quantize {job.qtype} nthreads={n}"

    def _derived_done(self, model):
        with self.lock:
            f16 = self.jobs[(model, "F16")]
            f16.derived -= 1
        self._maybe_delete(f16)

    def release(self, k):
        with self.lock:
            self.jobs[k].users -= 1
        self._maybe_delete(self.jobs[k])

    def _maybe_delete(self, job):
        with self.lock:
            if job.users <= 0 and job.derived <= 0 and not job.deleted and job.ready.is_set():
                job.deleted = True
                if job.path.exists():
                    job.path.unlink()
                    self.log(f"deleted {job.path.name}")
