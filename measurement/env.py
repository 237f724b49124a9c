"""Provenance and NVML: what machine and software produced a row, and energy/power/clock windows.

``provenance()`` is captured once per process. The git commit comes from ``ADVISOR_GIT_COMMIT`` (set it
when the code runs on a copy without ``.git``), else ``git rev-parse``; ``code_sha`` hashes the
``measurement/*.py`` files actually running, so rows stay traceable even from a dirty tree.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import re
import subprocess
import time
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


@lru_cache(maxsize=1)
def code_sha() -> str:
    h = hashlib.sha256()
    for p in sorted(HERE.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


@lru_cache(maxsize=1)
def git_commit() -> str:
    env = os.environ.get("ADVISOR_GIT_COMMIT")
    if env:
        return env
    f = HERE / ".git_commit"
    if f.exists():
        return f.read_text().strip()
    try:
        root = HERE.parent
        c = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                           timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "measurement"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (c + ("+dirty" if dirty else "")) if c else "unknown"
    except Exception:
        return "unknown"


_GPU_PATTERNS = [
    (r"h200", "h200"),
    (r"h100.*(pcie)", "h100-pcie"),
    (r"h100", "h100-sxm"),
    (r"a100.*80", "a100-80g-sxm"),
    (r"a100", "a100-40g-pcie"),
    (r"l40s", "l40s"),
    (r"b200", "b200"),
    (r"a10g", "a10g"),
    (r"\bl4\b", "l4"),
    (r"\bt4\b", "t4"),
    (r"4090", "rtx4090"),
    (r"3090", "rtx3090"),
    (r"5090", "rtx5090"),
]


def gpu_profile_id(name: str) -> str:
    """Our GPU profile id for a CUDA device name ("NVIDIA H100 80GB HBM3" -> "h100-sxm")."""
    n = (name or "").lower()
    for pat, gid in _GPU_PATTERNS:
        if re.search(pat, n):
            return gid
    if not n:
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", n.replace("nvidia", "")).strip("-")


class NVML:
    """Thin NVML wrapper (pynvml / nvidia-ml-py). Every call degrades to None when NVML is missing."""

    def __init__(self, index: int = 0):
        self.ok = False
        self.h = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.h = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.ok = True
        except Exception:
            self.nv = None

    def _call(self, fn, *a):
        if not self.ok:
            return None
        try:
            return getattr(self.nv, fn)(self.h, *a)
        except Exception:
            return None

    def energy_mj(self):
        return self._call("nvmlDeviceGetTotalEnergyConsumption")

    def power_w(self):
        v = self._call("nvmlDeviceGetPowerUsage")
        return None if v is None else v / 1000.0

    def sm_clock_mhz(self):
        return self._call("nvmlDeviceGetClockInfo", 1)  # NVML_CLOCK_SM = 1

    def temperature_c(self):
        return self._call("nvmlDeviceGetTemperature", 0)

    def uuid(self):
        v = self._call("nvmlDeviceGetUUID")
        return v.decode() if isinstance(v, bytes) else v

    def driver(self):
        if not self.ok:
            return None
        try:
            v = self.nv.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        except Exception:
            return None


_NVML: NVML | None = None


def nvml() -> NVML:
    global _NVML
    if _NVML is None:
        _NVML = NVML(int(os.environ.get("ADVISOR_NVML_INDEX", "0")))
    return _NVML


class Window:
    """A measurement window: synchronize, read the energy counter and clock at both ends.

    ``begin_window()`` / ``end_window(w)`` or ``with Window() as w``; then ``w.seconds``, ``w.energy_j``,
    ``w.avg_power_w``, ``w.sm_clock_mhz`` (sampled at the end, before the closing synchronize returns
    the GPU to idle)."""

    def __init__(self, device=None):
        self.device = device
        self.seconds = None
        self.energy_j = None
        self.avg_power_w = None
        self.sm_clock_mhz = None
        self.power_end_w = None

    def _sync(self):
        import torch

        if torch.cuda.is_available() and (self.device is None or getattr(self.device, "type", "cuda") == "cuda"):
            torch.cuda.synchronize()

    def begin(self):
        self._sync()
        n = nvml()
        self._e0 = n.energy_mj()
        self._t0 = time.perf_counter()
        return self

    def end(self):
        n = nvml()
        self.sm_clock_mhz = n.sm_clock_mhz()
        self.power_end_w = n.power_w()
        self._sync()
        t1 = time.perf_counter()
        e1 = n.energy_mj()
        self.seconds = t1 - self._t0
        if self._e0 is not None and e1 is not None:
            self.energy_j = (e1 - self._e0) / 1000.0
            self.avg_power_w = self.energy_j / self.seconds if self.seconds > 0 else None
        return self

    def __enter__(self):
        return self.begin()

    def __exit__(self, *exc):
        if exc[0] is None:
            self.end()
        return False


def begin_window(device=None) -> Window:
    return Window(device).begin()


def end_window(w: Window) -> Window:
    return w.end()


@lru_cache(maxsize=1)
def provenance() -> dict:
    """Machine and software facts for every row (captured once per process)."""
    d = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host_python": platform.python_version(),
        "git_commit": git_commit(),
        "code_sha": code_sha(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "bitsandbytes": _version("bitsandbytes"),
        "torchao": _version("torchao"),
    }
    try:
        import torch

        d["torch"] = torch.__version__
        d["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            d["gpu_name"] = p.name
            d["gpu_mem_gb"] = round(p.total_memory / 1e9, 2)
            d["gpu_cc"] = f"{p.major}.{p.minor}"
            d["gpu_sms"] = p.multi_processor_count
        else:
            d["gpu_name"] = "cpu"
    except Exception:
        d["gpu_name"] = "unknown"
    n = nvml()
    d["gpu_uuid"] = n.uuid()
    d["driver"] = n.driver()
    d["gpu"] = gpu_profile_id(d.get("gpu_name", ""))
    return d
