"""The GPU machine as the llama.cpp runner sees it: facts from nvidia-smi, measured peaks, and the NVML
energy counter of every GPU sampled in a thread."""
from __future__ import annotations

import subprocess
import threading
import time

from .bench import energy_between


# --------------------------------------------------------------------------------------------- machine
def sh(cmd, timeout=30):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except Exception as e:  # noqa
        return f"ERR {e}"


def gpu_facts() -> dict:
    q = sh("nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,power.limit,clocks.max.sm "
           "--format=csv,noheader")
    parts = [p.strip() for p in q.split(",")]
    f = {"gpu_name": parts[0] if parts else "", "gpu_uuid": parts[1] if len(parts) > 1 else "",
         "driver": parts[2] if len(parts) > 2 else "", "nvidia_smi": q,
         "n_gpus": max(1, len([x for x in q.splitlines() if x.strip()]))}
    nv = sh("nvcc --version | tail -2 | head -1")
    try:
        import torch
        f["cuda"] = f"torch {torch.__version__} cuda {torch.version.cuda}; {nv}"
    except Exception:
        f["cuda"] = nv
    return f


def measure_peaks(log) -> dict:
    import torch

    from measurement.roofline import _bench as bench  # the harness's timing loop (CUDA events, median)

    n = 1 << 30
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), iters=20)
    bw = 2 * n * 2 / t / 1e9
    t = bench(lambda: src.sum(dtype=torch.float32), iters=20)
    rbw = n * 2 / t / 1e9
    src = dst = None  # free (rebinding: the timing lambdas closed over them)
    M = 8192
    a = torch.randn(M, M, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(M, M, device="cuda", dtype=torch.bfloat16)
    t = bench(lambda: a @ b, iters=20)
    pk = 2 * M ** 3 / t / 1e12
    a = b = None
    torch.cuda.empty_cache()
    log(f"peaks: copy {bw:.0f} GB/s (read+write), read-only (sum) {rbw:.0f} GB/s, bf16 matmul {pk:.0f} TFLOP/s")
    return {"copy_bw_gbps": bw, "peak_tflops_bf16": pk, "read_bw_gbps": rbw}


class EnergySampler(threading.Thread):
    """(time.time(), total energy mJ) of every GPU every ``period`` s from NVML."""

    def __init__(self, period=0.05):
        super().__init__(daemon=True)
        self.period = period
        self.samples: list[list[tuple[float, float]]] = []  # per GPU index
        self.ok = False
        self._halt = threading.Event()
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nv = pynvml
            self.hs = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            for h in self.hs:
                self.nv.nvmlDeviceGetTotalEnergyConsumption(h)
            self.samples = [[] for _ in self.hs]
            self.ok = bool(self.hs)
        except Exception:
            self.ok = False

    def run(self):
        while self.ok and not self._halt.is_set():
            for i, h in enumerate(self.hs):
                try:
                    self.samples[i].append((time.time(), float(self.nv.nvmlDeviceGetTotalEnergyConsumption(h))))
                except Exception:
                    pass
            time.sleep(self.period)

    def stop(self):
        self._halt.set()

    def power(self, t0, t1, n_gpus: int = 1):
        """Average W of GPUs 0..n_gpus-1 together between t0 and t1."""
        es = [energy_between(list(s), t0, t1) for s in self.samples[:n_gpus]]
        if not es or any(e is None for e in es) or t1 <= t0:
            return None
        return sum(es) / (t1 - t0)
