"""Spread one sweep over many GPUs: one worker per GPU, every row streamed back into one locked dataset.

Two ways to get the GPUs, one protocol:

* ``run_ray(configs, out, address)`` - a Ray cluster (``address``; None or "local" starts a local one):
  one task per GPU (``num_gpus=1``, so Ray sets CUDA_VISIBLE_DEVICES), each running the harness on its
  share and handing every row to a sink actor on the driver's node, which appends it to ``<out>/rows.jsonl``
  under a file lock before the task moves to the next configuration.
* ``run_local(configs, out, gpus)`` - no Ray (the GPU machine: Ray's wheel is too large to carry there):
  one child process per GPU (``CUDA_VISIBLE_DEVICES`` = that GPU), rows read from its stdout as they come
  and appended the same way.

Shares keep each model's configurations together (one model build per worker) and balance the counts.
A configuration already in the dataset (same identity, any GPU, status other than ``error``) is not
scheduled again, and :class:`LockedStore` refuses a second row with a key it already holds, so an
interrupted sweep resumes without losing a row and two sweeps into one folder never duplicate one.

``backend="fake"`` replaces the harness with :func:`fake_rows` (no torch, no GPU): the CPU tests run the
whole path on a local Ray cluster with it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .launch import die_with_parent
from .store import RowStore, RunConfig, config_key

ROW_PREFIX = "ROW "


# --------------------------------------------------------------------------------------------- store
class LockedStore:
    """``<out>/rows.jsonl`` shared by concurrent writers (processes, Ray tasks, two sweeps): every append
    holds ``rows.jsonl.lock`` (the filelock package) and skips a row whose key is already stored."""

    def __init__(self, out_dir: str | Path):
        from filelock import FileLock

        self.store = RowStore(out_dir)
        self.lock = FileLock(str(self.store.path) + ".lock")

    def keys(self) -> set[str]:
        return {r.get("key") or config_key(r) for r in self.store.rows() if r.get("status") != "error"}

    def append_unique(self, row: dict) -> bool:
        key = row.get("key") or config_key(row)
        row["key"] = key
        with self.lock:
            if row.get("status") != "error" and key in self.keys():
                return False
            self.store.append(row)
            return True

    def rows(self) -> list[dict]:
        return self.store.rows()


def _ident_wo_gpu(d: dict) -> str:
    """A configuration's key on any GPU (the compile mode included when it is not the default)."""
    return config_key({**d, "gpu": None})


def pending(configs: Iterable[RunConfig], store: LockedStore) -> list[RunConfig]:
    """Configurations with no row yet (on any GPU), error rows excepted."""
    done = {_ident_wo_gpu(r) for r in store.rows() if r.get("status") != "error"}
    return [rc for rc in configs if _ident_wo_gpu(dataclasses.asdict(rc)) not in done]


# --------------------------------------------------------------------------------------------- shares
def shares(configs: list[RunConfig], n: int) -> list[list[RunConfig]]:
    """Split into at most ``n`` shares: a model's configurations stay together unless a model alone has
    more than an even share, then it is cut; largest first onto the least loaded share."""
    if n < 1:
        raise ValueError("need at least one worker")
    by_model: dict[str, list[RunConfig]] = {}
    for rc in configs:
        by_model.setdefault(rc.model, []).append(rc)
    even = max(1, -(-len(configs) // n))
    pieces = []
    for rcs in by_model.values():
        for i in range(0, len(rcs), even):
            pieces.append(rcs[i:i + even])
    pieces.sort(key=len, reverse=True)
    out: list[list[RunConfig]] = [[] for _ in range(min(n, len(pieces)) or 1)]
    for p in pieces:
        min(out, key=len).extend(p)
    return [s for s in out if s]


# --------------------------------------------------------------------------------------------- workers
def fake_rows(configs: Iterable[RunConfig], *, gpu: str = "fake-gpu", delay_s: float | None = None) -> Iterator[dict]:
    """Rows shaped like the harness's, with made-up numbers (tests only: ``weights`` says so)."""
    delay = float(os.environ.get("ADVISOR_FAKE_ROW_S", "0.01")) if delay_s is None else delay_s
    dev = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    for rc in configs:
        time.sleep(delay)
        row = dict(rc.ident(gpu), key=rc.key(gpu), status="ok", reason=None, compile_mode=rc.compile_mode,
                   decode_ms_per_token=1.0 + 0.01 * rc.batch, device=dev, pid=os.getpid(),
                   provenance="fake backend (tests): no measurement")
        yield row


def harness_rows(configs: list[RunConfig], out_dir: str | Path) -> Iterator[dict]:
    """Run the real harness in this process on this process's GPU; yield each row as it is written."""
    import queue

    from .runner import Runner

    q: queue.Queue = queue.Queue()
    done = object()

    def work():
        try:
            Runner(out_dir, on_row=q.put).run(configs)
        finally:
            q.put(done)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    while (r := q.get()) is not done:
        yield r
    t.join()


def worker_rows(configs: list[RunConfig], backend: str, work_dir: str | Path) -> Iterator[dict]:
    if backend == "fake":
        return fake_rows(configs)
    if backend == "harness":
        return harness_rows(configs, work_dir)
    raise ValueError(f"unknown backend {backend!r} (harness, fake)")


# --------------------------------------------------------------------------------------------- local
def run_local(configs: list[RunConfig], out_dir: str | Path, gpus: list[str], *, backend: str = "harness",
              on_row=None) -> dict:
    """One child process per GPU id in ``gpus``; rows appended to the locked store as they arrive."""
    out = Path(out_dir)
    store = LockedStore(out)
    todo = pending(configs, store)
    parts = shares(todo, len(gpus))
    procs, threads, counts = [], [], {"written": 0, "duplicates": 0, "workers": len(parts)}
    lock = threading.Lock()
    for gpu, share in zip(gpus, parts, strict=False):
        plan = out / "workers" / f"gpu{gpu}" / "plan.json"
        plan.parent.mkdir(parents=True, exist_ok=True)
        plan.write_text(json.dumps([dataclasses.asdict(rc) for rc in share]))
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu))
        p = subprocess.Popen([sys.executable, "-m", "measurement.scheduler", "worker", str(plan), backend],
                             stdout=subprocess.PIPE, text=True, env=env, preexec_fn=die_with_parent,
                             cwd=str(Path(__file__).resolve().parent.parent))
        procs.append(p)

        def pump(p=p):
            for line in p.stdout:
                if not line.startswith(ROW_PREFIX):
                    continue
                row = json.loads(line[len(ROW_PREFIX):])
                ok = store.append_unique(row)
                with lock:
                    counts["written" if ok else "duplicates"] += 1
                if on_row:
                    on_row(row)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        threads.append(t)
    for p, t in zip(procs, threads, strict=True):
        p.wait()
        t.join()
    counts["exit_codes"] = [p.returncode for p in procs]
    counts["scheduled"] = len(todo)
    return counts


def _worker_main(plan: str, backend: str) -> int:
    configs = [RunConfig(**d) for d in json.loads(Path(plan).read_text())]
    for row in worker_rows(configs, backend, Path(plan).parent):
        sys.stdout.write(ROW_PREFIX + json.dumps(row, default=str) + "\n")
        sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------------------------- ray
def run_ray(configs: list[RunConfig], out_dir: str | Path, address: str | None = None, *, backend: str = "harness",
            num_gpus: int | None = None, on_row=None) -> dict:
    """One Ray task per GPU of the cluster at ``address`` (None / "local": a local cluster, declaring
    ``num_gpus`` GPUs when given); rows appended through a sink actor on this node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out = Path(out_dir).resolve()
    started = False
    if not ray.is_initialized():
        if address in (None, "", "local"):
            ray.init(num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        store = LockedStore(out)
        before = len(store.rows())
        todo = pending(configs, store)
        n = int(ray.cluster_resources().get("GPU", 0))
        if n < 1:
            raise RuntimeError("the Ray cluster has no GPUs (declare them, or use --gpus on one machine)")
        parts = shares(todo, n)
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        sink = ray.remote(_Sink).options(scheduling_strategy=here, num_cpus=0).remote(str(out))

        @ray.remote(num_gpus=1, max_retries=0)
        def task(share, backend, work_dir, sink):
            rcs = [RunConfig(**d) for d in share]
            n = 0
            for row in worker_rows(rcs, backend, work_dir):
                ray.get(sink.append.remote(row))  # durable before the next configuration
                n += 1
            return n

        refs = [task.remote([dataclasses.asdict(rc) for rc in share], backend,
                            str(out / "workers" / f"task{i}"), sink) for i, share in enumerate(parts)]
        rows_per_task = ray.get(refs)
        counts = ray.get(sink.counts.remote())
        if on_row:  # this run's rows, as run_local reports them
            for r in store.rows()[before:]:
                on_row(r)
        return dict(counts, workers=len(parts), rows_per_task=rows_per_task, scheduled=len(todo))
    finally:
        if started:
            ray.shutdown()


class _Sink:
    """Ray actor on the driver's node: the one writer of the dataset (through :class:`LockedStore`)."""

    def __init__(self, out_dir: str):
        self.store = LockedStore(out_dir)
        self.n = {"written": 0, "duplicates": 0}

    def append(self, row: dict) -> bool:
        ok = self.store.append_unique(row)
        self.n["written" if ok else "duplicates"] += 1
        return ok

    def counts(self) -> dict:
        return dict(self.n)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        raise SystemExit(_worker_main(sys.argv[2], sys.argv[3]))
    print("usage: python -m measurement.scheduler worker PLAN.json harness|fake", file=sys.stderr)
    raise SystemExit(2)
