"""measurement.scheduler: shares, the locked store, local workers and a local Ray cluster (fake backend)."""
from __future__ import annotations

import multiprocessing as mp
from collections import Counter

import pytest

from measurement.store import RunConfig
from measurement.scheduler import LockedStore, fake_rows, pending, run_local, run_ray, shares


def _configs(models=("llama3.2-1b", "llama3.1-8b", "qwen2.5-7b"), batches=(1, 2, 4, 8)):
    return [RunConfig(model=m, batch=b) for m in models for b in batches]


def test_shares_cover_every_config_once_and_keep_models_together():
    cs = _configs()
    for n in (1, 2, 3, 5):
        parts = shares(cs, n)
        assert len(parts) <= n
        flat = [rc for p in parts for rc in p]
        assert sorted(map(repr, flat)) == sorted(map(repr, cs))
        if n <= 3:  # 3 models of 4 configs: no model needs cutting
            assert all(len({rc.model for rc in p}) * 4 == len(p) for p in parts)
    big = shares(_configs(models=("llama3.1-8b",), batches=tuple(range(1, 9))), 2)
    assert [len(p) for p in big] == [4, 4]


def _append_worker(out, rows):
    st = LockedStore(out)
    for r in rows:
        st.append_unique(r)


def test_two_concurrent_writers_give_every_row_once(tmp_path):
    a = list(fake_rows(_configs(models=("llama3.2-1b",), batches=tuple(range(1, 9))), delay_s=0))
    b = list(fake_rows(_configs(models=("llama3.1-8b",), batches=tuple(range(1, 9))), delay_s=0))
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_append_worker, args=(str(tmp_path), rows)) for rows in (a, b, a)]  # a twice
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    rows = LockedStore(tmp_path).rows()
    assert len(rows) == 16
    assert max(Counter(r["key"] for r in rows).values()) == 1


def test_resume_schedules_only_what_is_missing(tmp_path):
    cs = _configs()
    st = LockedStore(tmp_path)
    for r in fake_rows(cs[:5], delay_s=0):
        st.append_unique(r)
    err = next(fake_rows(cs[5:6], delay_s=0))
    err["status"] = "error"
    st.append_unique(err)  # an error row is retried
    assert pending(cs, st) == cs[5:]


def test_local_workers_one_per_gpu(tmp_path):
    cs = _configs()
    res = run_local(cs, tmp_path, ["0", "1"], backend="fake")
    assert res["exit_codes"] == [0, 0] and res["written"] == len(cs)
    rows = LockedStore(tmp_path).rows()
    assert {r["device"] for r in rows} == {"0", "1"}
    assert len({r["key"] for r in rows}) == len(cs)
    again = run_local(cs, tmp_path, ["0", "1"], backend="fake")
    assert again["scheduled"] == 0 and len(LockedStore(tmp_path).rows()) == len(cs)


def test_ray_local_cluster_streams_rows_into_one_dataset(tmp_path):
    pytest.importorskip("ray")
    cs = _configs()
    res = run_ray(cs[:7], tmp_path, None, backend="fake", num_gpus=2)
    assert res["workers"] == 2 and res["written"] == 7 and res["duplicates"] == 0
    res = run_ray(cs, tmp_path, None, backend="fake", num_gpus=2)  # resumed: only the 5 missing
    assert res["scheduled"] == 5
    rows = LockedStore(tmp_path).rows()
    assert len(rows) == len(cs) == len({r["key"] for r in rows})
    assert {r["device"] for r in rows} == {"0", "1"}  # Ray gave each task its own GPU


def test_measure_command_spreads_over_gpus(tmp_path):
    from click.testing import CliRunner

    from measurement.cli import measure_command
    args = ["--model", "llama3.2-1b,llama3.1-8b", "--batch", "1,2", "--gpus", "0,1", "--fake-backend",
            "--out", str(tmp_path)]
    r = CliRunner().invoke(measure_command, args)
    assert r.exit_code == 0, r.output
    assert len(LockedStore(tmp_path).rows()) == 4
    bad = CliRunner().invoke(measure_command, args[:4] + ["--gpus", "a,b", "--fake-backend", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "GPU ids are integers" in bad.output


def test_a_second_sweep_on_one_folder_exits(tmp_path):
    from click.testing import CliRunner
    from filelock import FileLock

    from measurement.cli import measure_command
    held = FileLock(str(tmp_path / "sweep.lock"))
    held.acquire()
    try:
        r = CliRunner().invoke(measure_command, ["--model", "llama3.2-1b", "--gpus", "0", "--fake-backend",
                                                 "--out", str(tmp_path)])
        assert r.exit_code == 2 and "another sweep" in r.output
        assert not (tmp_path / "rows.jsonl").exists()
    finally:
        held.release()


def test_sweep_yaml_alias_bomb_and_garbage_are_refused_fast(tmp_path):
    import time

    from click.testing import CliRunner

    from measurement.cli import measure_command
    bomb = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, "
                                                      f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                                                      f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(12)]
    bomb.write_text("\n".join(lines) + "\n")
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\xff\xfe: [\n")
    for f in (bomb, junk):
        t0 = time.time()
        r = CliRunner().invoke(measure_command, ["--sweep", str(f), "--dry-run"])
        assert r.exit_code == 2 and str(f) in r.output and time.time() - t0 < 1.0, r.output


def test_workers_die_with_their_parent(tmp_path):
    """A killed sweep leaves no worker behind (PR_SET_PDEATHSIG on Linux)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    code = ("import subprocess, sys, time\n"
            "from measurement.launch import die_with_parent\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=die_with_parent)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the worker outlived its parent")


def test_measure_writes_where_the_user_is(tmp_path, monkeypatch):
    """A relative --out is the user's folder, not the package's (workers run from the package folder)."""
    from click.testing import CliRunner

    from measurement.cli import measure_command
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(measure_command, ["--model", "llama3.2-1b", "--gpus", "0", "--fake-backend",
                                             "--out", "mine"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "mine" / "rows.jsonl").exists()


def test_measure_without_out_writes_to_the_user_data_folder(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from measurement.cli import measure_command
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(measure_command, ["--model", "llama3.2-1b", "--gpus", "0", "--fake-backend"])
    assert r.exit_code == 0, r.output
    runs = list((tmp_path / "data" / "advisor").glob("measure-*/rows.jsonl"))
    assert len(runs) == 1 and str(runs[0].parent) in r.output.replace("\n", "")


def test_a_compile_mode_is_part_of_a_configuration(tmp_path):
    """Issue 15: the same config under another compile mode is another measurement (not skipped, no clash)."""
    a = RunConfig(model="llama3.2-1b", batch=1)
    b = RunConfig(model="llama3.2-1b", batch=1, compile_mode="regional-graph-nocompile")
    assert a.key("h200") != b.key("h200")
    assert "compile_mode" not in a.key("h200")  # the default mode: keys of earlier rows are unchanged
    st = LockedStore(tmp_path)
    for r in fake_rows([a], delay_s=0):
        st.append_unique(r)
    assert pending([a, b], st) == [b]
