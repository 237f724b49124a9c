"""Launchers: where a sweep's configs run. :class:`InProcessLauncher` runs them in this process;
:class:`SubprocessLauncher` runs one child (``python -m measurement.harness``) per model, so an
out-of-memory or a crash stays inside it: a crashed child's current config becomes an ``error`` row and
the child restarts on the rest. :func:`die_with_parent` makes a GPU worker die with its parent.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .runner import Runner, base_row
from .store import RowStore, RunConfig


class InProcessLauncher:
    def __init__(self, out_dir, **kw):
        self.out_dir, self.kw = out_dir, kw

    def run(self, configs: list[RunConfig]) -> list[dict]:
        return Runner(self.out_dir, **self.kw).run(configs)


def die_with_parent() -> None:
    """preexec_fn for GPU workers: Linux delivers SIGTERM to the child when its parent dies (PR_SET_PDEATHSIG),
    so killing a sweep never leaves a worker holding the GPU. A no-op elsewhere."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class SubprocessLauncher:
    """One child process per model (an OOM or a crash stays inside it). A crashed child's current config
    becomes an ``error`` row and the child is restarted on the rest."""

    def __init__(self, out_dir, *, deadline: float | None = None, on_row=None, python: str = sys.executable,
                 max_restarts: int = 3):
        self.out_dir = Path(out_dir)
        self.deadline = deadline
        self.on_row = on_row
        self.python = python
        self.max_restarts = max_restarts

    def run(self, configs: list[RunConfig]) -> list[dict]:
        from .env import provenance

        store = RowStore(self.out_dir)
        segments: list[tuple[str, list[RunConfig]]] = []  # consecutive runs of one model keep the sweep's order
        for rc in configs:
            if segments and segments[-1][0] == rc.model:
                segments[-1][1].append(rc)
            else:
                segments.append((rc.model, [rc]))
        env = dict(os.environ)
        env.setdefault("ADVISOR_PEAKS_FILE", str(self.out_dir / "machine_peaks.json"))
        seen = len(store.rows())
        for seg, (model, rcs) in enumerate(segments):
            for attempt in range(self.max_restarts + 1):
                if self.deadline and time.time() > self.deadline:
                    break
                plan = Path(tempfile.gettempdir()) / f"advisor_plan_{os.getpid()}_{seg}_{_safe(model)}.json"
                plan.write_text(json.dumps([dataclasses.asdict(r) for r in rcs]))
                cmd = [self.python, "-m", "measurement.harness", "--plan", str(plan), "--out", str(self.out_dir)]
                if self.deadline:
                    cmd += ["--deadline", str(self.deadline)]
                try:
                    p = subprocess.run(cmd, env=env, cwd=str(Path(__file__).resolve().parent.parent),
                                       preexec_fn=die_with_parent)  # noqa: PLW1509 - no threads start before it
                finally:
                    plan.unlink(missing_ok=True)  # the child has read it; no plan file outlives the run
                rows = store.rows()
                for r in rows[seen:]:
                    if self.on_row:
                        self.on_row(r)
                seen = len(rows)
                if p.returncode == 0:
                    break
                cur = self.out_dir / "current.json"
                if cur.exists():
                    try:
                        rc = RunConfig(**json.loads(cur.read_text()))
                        prov = provenance()
                        row = base_row(rc, {**prov, "gpu": rows[-1]["gpu"] if rows else prov.get("gpu")})
                        row.update(status="error", reason=f"worker process died (exit code {p.returncode})")
                        row["flags"] = None
                        store.append(row)
                        seen += 1
                        if self.on_row:
                            self.on_row(row)
                    except Exception:
                        pass
                    cur.unlink(missing_ok=True)
        return store.rows()


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in s)
