"""measurement.scheduler, the parts tests/measurement/test_scheduler.py does not reach: the worker entry
point and its ROW protocol, the harness row stream (runner faked), the Ray driver on an in-process fake of
the ray module (init/shutdown, no-GPU refusal, sink counts), and the locked store's duplicate rule."""
from __future__ import annotations

import json
import runpy
import sys
import types
import warnings
from types import SimpleNamespace

import pytest

from measurement import scheduler as SC
from measurement.store import RunConfig


@pytest.fixture(autouse=True)
def fast_fake_rows(monkeypatch):
    monkeypatch.setenv("ADVISOR_FAKE_ROW_S", "0")


def _configs(n=3, model="llama3.2-1b"):
    return [RunConfig(model=model, batch=b) for b in range(1, n + 1)]


def test_locked_store_skips_duplicates_but_keeps_error_rows(tmp_path):
    st = SC.LockedStore(tmp_path)
    row = next(SC.fake_rows(_configs(1)))
    assert st.append_unique(dict(row)) and not st.append_unique(dict(row))
    err = dict(row, status="error")
    assert st.append_unique(dict(err)) and st.append_unique(dict(err))  # every failure is kept
    assert [r["status"] for r in st.rows()] == ["ok", "error", "error"]
    assert st.keys() == {row["key"]}
    with pytest.raises(ValueError):
        SC.shares(_configs(), 0)
    assert SC.shares([], 3) == []


def test_worker_main_prints_one_row_line_per_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"model": "llama3.2-1b", "batch": b} for b in (1, 2)]))
    assert SC._worker_main(str(plan), "fake") == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(x.startswith(SC.ROW_PREFIX) for x in lines)
    rows = [json.loads(x[len(SC.ROW_PREFIX):]) for x in lines]
    assert [r["batch"] for r in rows] == [1, 2] and {r["device"] for r in rows} == {"3"}
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        SC.worker_rows([], "gpu", tmp_path)


def test_module_entry_point(tmp_path, monkeypatch, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"model": "llama3.2-1b", "batch": 4}]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        monkeypatch.setattr(sys, "argv", ["scheduler", "worker", str(plan), "fake"])
        with pytest.raises(SystemExit) as e:
            runpy.run_module("measurement.scheduler", run_name="__main__")
        assert e.value.code == 0 and capsys.readouterr().out.startswith(SC.ROW_PREFIX)
        monkeypatch.setattr(sys, "argv", ["scheduler"])
        with pytest.raises(SystemExit) as e:
            runpy.run_module("measurement.scheduler", run_name="__main__")
        assert e.value.code == 2 and "usage:" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_harness_rows_stream_the_runners_rows(tmp_path, monkeypatch):
    from measurement import runner

    made = {}

    class FakeRunner:
        def __init__(self, out_dir, on_row):
            made["out"] = out_dir
            self.on_row = on_row

        def run(self, configs):
            for rc in configs:
                self.on_row({"batch": rc.batch})

    monkeypatch.setattr(runner, "Runner", FakeRunner)
    rows = list(SC.worker_rows(_configs(3), "harness", tmp_path / "w"))
    assert rows == [{"batch": 1}, {"batch": 2}, {"batch": 3}] and made["out"] == tmp_path / "w"

    class Crashing(FakeRunner):
        def run(self, configs):
            self.on_row({"batch": 1})
            raise RuntimeError("CUDA error")

    monkeypatch.setattr(runner, "Runner", Crashing)
    assert list(SC.harness_rows(_configs(2), tmp_path)) == [{"batch": 1}]  # the stream still ends


def _fake_ray(gpus=2, initialized=False):
    """Just enough of the ray API for run_ray, executed in this process."""
    ray = types.ModuleType("ray")
    ray.log = []

    class Remote:
        def __init__(self, target):
            self.target = target

        def options(self, **kw):
            ray.log.append(("options", sorted(kw)))
            return self

        def remote(self, *a, **k):
            if isinstance(self.target, type):
                obj = self.target(*a, **k)
                return SimpleNamespace(append=SimpleNamespace(remote=obj.append),
                                       counts=SimpleNamespace(remote=obj.counts))
            return self.target(*a, **k)

    def remote(*a, **kw):
        if a and not kw:
            return Remote(a[0])
        ray.log.append(("task", kw))
        return Remote

    ray.remote = remote
    ray.get = lambda x: x
    ray.is_initialized = lambda: initialized
    ray.init = lambda **kw: ray.log.append(("init", kw))
    ray.shutdown = lambda: ray.log.append(("shutdown",))
    ray.cluster_resources = lambda: {"GPU": gpus, "CPU": 8}
    ray.get_runtime_context = lambda: SimpleNamespace(get_node_id=lambda: "node-1")
    util = types.ModuleType("ray.util")
    strat = types.ModuleType("ray.util.scheduling_strategies")
    strat.NodeAffinitySchedulingStrategy = lambda node_id, soft: ("affinity", node_id, soft)
    return {"ray": ray, "ray.util": util, "ray.util.scheduling_strategies": strat}


def test_run_ray_on_a_fake_cluster(tmp_path, monkeypatch):
    mods = _fake_ray(gpus=2)
    for k, v in mods.items():
        monkeypatch.setitem(sys.modules, k, v)
    ray = mods["ray"]
    seen = []
    cs = _configs(3) + _configs(2, model="llama3.1-8b")
    res = SC.run_ray(cs, tmp_path, "ray://head:10001", backend="fake", on_row=seen.append)
    assert res["written"] == 5 and res["duplicates"] == 0 and res["workers"] == 2 and res["scheduled"] == 5
    assert sorted(res["rows_per_task"]) == [2, 3] and len(seen) == 5
    assert ray.log[0] == ("init", {"address": "ray://head:10001", "log_to_driver": False})
    assert ("task", {"num_gpus": 1, "max_retries": 0}) in ray.log and ray.log[-1] == ("shutdown",)
    # resumed: nothing left to schedule; a cluster already initialized is left running
    mods2 = _fake_ray(gpus=2, initialized=True)
    for k, v in mods2.items():
        monkeypatch.setitem(sys.modules, k, v)
    res = SC.run_ray(cs, tmp_path, None, backend="fake")
    assert res["scheduled"] == 0 and res["written"] == 0 and mods2["ray"].log.count(("shutdown",)) == 0


def test_run_ray_refuses_a_cluster_without_gpus(tmp_path, monkeypatch):
    mods = _fake_ray(gpus=0)
    for k, v in mods.items():
        monkeypatch.setitem(sys.modules, k, v)
    with pytest.raises(RuntimeError, match="no GPUs"):
        SC.run_ray(_configs(1), tmp_path, "local", backend="fake", num_gpus=None)
    log = mods["ray"].log
    assert log[0] == ("init", {"num_gpus": None, "include_dashboard": False, "log_to_driver": False})
    assert log[-1] == ("shutdown",)  # a cluster it started is shut down on the error too
