"""measurement.launch without a GPU: SubprocessLauncher's segments, restarts and crash rows with the worker
process faked (it appends rows the way ``python -m measurement.harness`` does), and die_with_parent."""
from __future__ import annotations

import ctypes
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from measurement import launch as L
from measurement.store import RowStore, RunConfig


@pytest.fixture(autouse=True)
def no_git(fixed_commit):
    yield


class FakeWorker:
    """Stands in for subprocess.run of the harness: measures the plan's configs in order, and 'crashes'
    (exit code 137, current.json left behind) on each config listed in ``crash_on`` the first time."""

    def __init__(self, crash_on=(), always_crash=()):
        self.crash_on, self.always_crash = set(crash_on), set(always_crash)
        self.calls = []

    def run(self, cmd, env=None, cwd=None, preexec_fn=None):
        assert cmd[1:3] == ["-m", "measurement.harness"] and preexec_fn is L.die_with_parent
        assert Path(cwd, "measurement", "harness.py").exists()
        plan = json.loads(Path(cmd[cmd.index("--plan") + 1]).read_text())
        out = Path(cmd[cmd.index("--out") + 1])
        self.calls.append(([d["batch"] for d in plan], "--deadline" in cmd, env.get("ADVISOR_PEAKS_FILE")))
        store = RowStore(out)
        done = store.done_keys()  # as the harness resumes: an error row is retried once
        for d in plan:
            rc = RunConfig(**d)
            if rc.key("h200") in done:
                continue
            if rc.batch in self.crash_on or rc.batch in self.always_crash:
                self.crash_on.discard(rc.batch)
                (out / "current.json").write_text(json.dumps(d))
                return SimpleNamespace(returncode=137)
            store.append({"key": rc.key("h200"), "gpu": "h200", "model": rc.model, "batch": rc.batch,
                          "status": "ok"})
        return SimpleNamespace(returncode=0)


def _launch(monkeypatch, tmp_path, worker, **kw):
    monkeypatch.delenv("ADVISOR_PEAKS_FILE", raising=False)  # an earlier sweep in this process may have set it
    monkeypatch.setattr(L, "subprocess", SimpleNamespace(run=worker.run))
    plans = tmp_path / "plans"
    plans.mkdir(parents=True)
    monkeypatch.setattr(L.tempfile, "tempdir", str(plans))
    seen = []
    rows = L.SubprocessLauncher(tmp_path, on_row=seen.append, python="/usr/bin/python3", **kw).run(
        [RunConfig(model="a", batch=1), RunConfig(model="a", batch=2), RunConfig(model="b", batch=4),
         RunConfig(model="a", batch=8)])
    assert not list(plans.iterdir()), "a plan file outlived its child"
    return rows, seen


def test_one_child_per_model_segment(monkeypatch, tmp_path):
    w = FakeWorker()
    rows, seen = _launch(monkeypatch, tmp_path, w)
    # consecutive configs of one model share a child; the sweep's order is kept
    assert [c[0] for c in w.calls] == [[1, 2], [4], [8]]
    assert [r["batch"] for r in rows] == [1, 2, 4, 8] and seen == rows
    assert w.calls[0][2] == str(tmp_path / "machine_peaks.json") and not w.calls[0][1]


def test_a_crashed_child_gives_an_error_row_and_restarts(monkeypatch, tmp_path):
    w = FakeWorker(crash_on={2})
    rows, seen = _launch(monkeypatch, tmp_path, w)
    assert [c[0] for c in w.calls] == [[1, 2], [1, 2], [4], [8]]
    st = [(r["batch"], r["status"]) for r in rows]
    assert st == [(1, "ok"), (2, "error"), (2, "ok"), (4, "ok"), (8, "ok")]
    err = rows[1]
    assert err["reason"] == "worker process died (exit code 137)" and err["gpu"] == "h200" and err["flags"] is None
    assert err["git_commit"] == "test-commit" and json.loads(err["config_json"])["batch"] == 2
    assert not (tmp_path / "current.json").exists() and len(seen) == 5


def test_restarts_are_bounded_and_the_deadline_stops_new_children(monkeypatch, tmp_path):
    w = FakeWorker(always_crash={2})
    rows, _ = _launch(monkeypatch, tmp_path, w, max_restarts=1)
    assert [c[0] for c in w.calls] == [[1, 2], [1, 2], [4], [8]]  # two attempts, then the sweep moves on
    assert [r["status"] for r in rows if r["batch"] == 2] == ["error", "error"]
    w2 = FakeWorker()
    rows, _ = _launch(monkeypatch, tmp_path / "late", w2, deadline=1.0)  # long past
    assert w2.calls == [] and rows == []
    w3 = FakeWorker()
    _launch(monkeypatch, tmp_path / "timed", w3, deadline=4e9)
    assert all(c[1] for c in w3.calls)  # the deadline is handed to each child


def test_in_process_launcher_hands_configs_to_the_runner(monkeypatch, tmp_path):
    got = {}

    class FakeRunner:
        def __init__(self, out_dir, **kw):
            got.update(out=out_dir, kw=kw)

        def run(self, configs):
            return [{"batch": rc.batch} for rc in configs]

    monkeypatch.setattr(L, "Runner", FakeRunner)
    rows = L.InProcessLauncher(tmp_path, deadline=5.0).run([RunConfig(model="a", batch=3)])
    assert rows == [{"batch": 3}] and got == {"out": tmp_path, "kw": {"deadline": 5.0}}


def test_die_with_parent_sets_the_death_signal(monkeypatch):
    import signal

    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name, use_errno: SimpleNamespace(prctl=lambda *a: calls.append(a)))
    L.die_with_parent()
    assert calls == [(1, signal.SIGTERM)]

    def no_libc(*a, **k):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    L.die_with_parent()  # elsewhere: a no-op


def test_safe_names():
    assert L._safe("meta-llama/Llama-3.1 8B") == "meta-llama_Llama-3.1_8B"
