"""measurement.llamacpp.files: the GGUF producer thread (no GPU, no gguf package, a fake llama-quantize).

Checked: production order (each model's F16 first), the lookahead and disk-room gates, status of failed
and unsupported files, and deletion as soon as no pending step (or derived quantization) needs a file.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from measurement.llamacpp import files as F

M = "llama3.2-1b"


def _quantizer(bindir: Path) -> Path:
    bindir.mkdir(parents=True, exist_ok=True)
    q = bindir / "llama-quantize"
    q.write_text('#!/bin/sh\necho "$@" >> "$0.args"\n'
                 'if [ "$3" = IQ4_XS ]; then echo "need an importance matrix" >&2; exit 1; fi\n'
                 'if [ "$3" = Q2_K ]; then echo "segfault" >&2; exit 139; fi\n'
                 'cp "$1" "$2"\n')
    q.chmod(0o755)
    return bindir


def _files(tmp_path, steps, monkeypatch, free=10 ** 13, write=None, **kw):
    logs = []
    monkeypatch.setattr(F.shutil, "disk_usage", lambda p: SimpleNamespace(free=free() if callable(free) else free))

    def write_f16(self, cat, job):
        if write:
            return write(job)
        job.path.write_bytes(b"GGUF" + job.model.encode())
        return "ok", "written"

    monkeypatch.setattr(F.Files, "_write_f16", write_f16)
    root = tmp_path / "models"
    root.mkdir(exist_ok=True)
    fs = F.Files(steps, root, _quantizer(tmp_path / "bin"), tmp_path / "src", logs.append, **kw)
    return fs, logs


def _wait(ev, s=10):
    assert ev.wait(s), "file job never finished"


def test_order_counts_and_statuses(tmp_path, monkeypatch):
    steps = [(M, "Q4_0", []), (M, "Q4_0", []), (M, "IQ4_XS", []), (M, "Q2_K", []), ("llama3.2-3b", "F16", [])]
    fs, logs = _files(tmp_path, steps, monkeypatch, lookahead=10)
    # every model's F16 is produced before its quantizations, even when no step uses the F16 itself
    assert fs.prod_order == [(M, "F16"), (M, "Q4_0"), (M, "IQ4_XS"), (M, "Q2_K"), ("llama3.2-3b", "F16")]
    assert fs.order == [(M, "Q4_0"), (M, "IQ4_XS"), (M, "Q2_K"), ("llama3.2-3b", "F16")]
    assert fs.jobs[(M, "Q4_0")].users == 2 and fs.jobs[(M, "F16")].users == 0 and fs.jobs[(M, "F16")].derived == 3
    fs.thread.start()
    for k in fs.prod_order:
        _wait(fs.jobs[k].ready)
    fs.thread.join(5)
    j = fs.jobs
    assert (j[(M, "Q4_0")].status, j[(M, "IQ4_XS")].status, j[(M, "Q2_K")].status) == ("ok", "unsupported", "error")
    assert "rc=139" in j[(M, "Q2_K")].reason and "importance matrix" in j[(M, "IQ4_XS")].reason
    assert j[(M, "Q4_0")].path.read_bytes() == b"GGUF" + M.encode()  # the quantizer's input was the F16 file
    assert not list(fs.root.glob("*.tmp"))  # failed quantizations leave no partial file
    # the F16 was deleted once its three quantizations were done (no step uses it)
    assert j[(M, "F16")].deleted and not j[(M, "F16")].path.exists()
    args = (tmp_path / "bin" / "llama-quantize.args").read_text().splitlines()
    assert args[0].split()[2:] == ["Q4_0", str(F.os.cpu_count() or 4)]  # no producer cores: every core
    # Q4_0 has two users: the file stays until both released it
    fs.release((M, "Q4_0"))
    assert j[(M, "Q4_0")].path.exists()
    fs.release((M, "Q4_0"))
    assert not j[(M, "Q4_0")].path.exists() and any("deleted llama3.2-1b-Q4_0.gguf" in x for x in logs)


def test_lookahead_and_disk_room_hold_the_producer(tmp_path, monkeypatch):
    free = {"v": 0}
    steps = [(M, "F16", []), (M, "Q8_0", []), (M, "Q4_0", [])]
    fs, _ = _files(tmp_path, steps, monkeypatch, free=lambda: free["v"], lookahead=1, prod_cores={0})
    monkeypatch.setattr(fs, "est_bytes", lambda m, q: 1e9)
    fs.thread.start()
    time.sleep(0.3)
    assert not fs.jobs[(M, "F16")].ready.is_set()  # no room on the disk: nothing written
    free["v"] = 4e9 + 1  # the file's estimate plus 3 GB of slack
    _wait(fs.jobs[(M, "Q8_0")].ready)
    time.sleep(0.3)
    assert not fs.jobs[(M, "Q4_0")].ready.is_set()  # 2 steps ahead of the consumer, lookahead 1
    fs.consumed = 1
    _wait(fs.jobs[(M, "Q4_0")].ready)
    assert fs.jobs[(M, "Q4_0")].status == "ok"
    assert (tmp_path / "bin" / "llama-quantize.args").read_text().split()[-1] == "1"  # one producer core
    fs.stop = True
    fs.thread.join(5)


def test_stop_and_deadline_and_errors(tmp_path, monkeypatch):
    # stopped before it started: nothing produced
    fs, _ = _files(tmp_path, [(M, "F16", [])], monkeypatch)
    fs.stop = True
    fs._produce()
    assert not fs.jobs[(M, "F16")].ready.is_set()
    # under 20 s left: every file is an error, none is written
    fs, _ = _files(tmp_path, [(M, "Q4_0", [])], monkeypatch, deadline=SimpleNamespace(remaining=lambda: 5.0))
    fs._produce()
    assert [(j.status, j.reason) for j in fs.jobs.values()] == [("error", "deadline before the file was made")] * 2
    assert not list(fs.root.glob("*.gguf"))

    # the F16 writer raises: that file is an error with the exception, its quantizations have no source
    def boom(job):
        raise ValueError("no vocabulary file")

    fs, logs = _files(tmp_path, [(M, "Q4_0", [])], monkeypatch, write=boom)
    fs._produce()
    assert fs.jobs[(M, "F16")].status == "error" and fs.jobs[(M, "F16")].reason == "ValueError: no vocabulary file"
    q = fs.jobs[(M, "Q4_0")]
    assert q.status == "error" and q.reason.startswith("no F16 source: ValueError")
    assert any("Traceback" in x for x in logs)


@pytest.mark.parametrize("q,bpw", [("F16", 16), ("Q4_K_M", 4.9), ("XYZ", 16)])
def test_est_bytes_from_the_catalog(tmp_path, q, bpw):
    from measurement.llamacpp.gguf_arch import arch_spec
    from profiles import load

    fs = F.Files([(M, "F16", [])], tmp_path, tmp_path, tmp_path, print)
    n = arch_spec(load().llm(M)).n_params
    assert fs.est_bytes(M, q) == pytest.approx(n * bpw / 8)
    assert fs._params == {M: n}


def test_write_f16_through_gguf_py(tmp_path, monkeypatch):
    from measurement.llamacpp import gguf_arch

    seen = {}

    def write_gguf(spec, path, vocab_dir):
        seen.update(arch=spec.arch, vocab_dir=vocab_dir, tmp=path.suffix)
        path.write_bytes(b"GGUF")
        return {"params": spec.n_params, "seconds": 0.5}

    monkeypatch.setattr(gguf_arch, "write_gguf", write_gguf)
    monkeypatch.setattr(F.sys, "path", list(F.sys.path))
    from profiles import load

    fs = F.Files([(M, "F16", [])], tmp_path, tmp_path / "bin", tmp_path / "src", print)
    job = fs.jobs[(M, "F16")]
    st, why = fs._write_f16(load(), job)
    n = gguf_arch.arch_spec(load().llm(M)).n_params
    assert st == "ok" and why == f"gguf-py wrote {n / 1e9:.3f}B params in 0.5s"
    assert job.path.read_bytes() == b"GGUF" and not job.path.with_suffix(".tmp").exists()
    assert seen == {"arch": "llama", "vocab_dir": tmp_path / "src" / "models", "tmp": ".tmp"}
    assert F.sys.path[0] == str(tmp_path / "src" / "gguf-py")  # llama.cpp's own gguf-py is imported first


def test_stop_while_waiting_for_room(tmp_path, monkeypatch):
    # no room on the disk: the producer waits; stopping it ends the thread without writing anything
    fs, _ = _files(tmp_path, [(M, "F16", [])], monkeypatch, free=0, prod_cores={10 ** 6})  # no such core: ignored
    fs.thread.start()
    time.sleep(0.2)
    assert fs.thread.is_alive() and not fs.jobs[(M, "F16")].ready.is_set()
    fs.stop = True
    fs.thread.join(5)
    assert not fs.thread.is_alive() and not list(fs.root.iterdir())
