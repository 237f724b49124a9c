"""measurement.llamacpp.build without a compiler: prune a fake llama-cpp-python sdist, the cmake command
lines (subprocess faked), pack / unpack of a build, and the command line."""
from __future__ import annotations

import json
import tarfile

import pytest

from measurement.llamacpp import build as B

CMAKE = "set(GGML_VERSION_MAJOR 0)\nset(GGML_VERSION_MINOR 25)\nset(GGML_VERSION_PATCH 3)\n"


def _sdist(tmp_path):
    """A llama-cpp-python source tree: vendor/llama.cpp with things prepare keeps and things it prunes."""
    root = tmp_path / "llama_cpp_python-0.3.36"
    v = root / "vendor" / "llama.cpp"
    for d in ("docs", "tests", "examples", "tools/server", "tools/mtmd/legacy-models", "src", "ggml", "tools/mtmd",
              "models/templates"):
        (v / d).mkdir(parents=True, exist_ok=True)
    (v / "ggml" / "CMakeLists.txt").write_text(CMAKE)
    (v / "src" / "llama.cpp").write_text("// engine")
    (v / "tools" / "mtmd" / "mtmd.cpp").write_text("// kept")
    (v / "docs" / "build.md").write_text("doc")
    (v / "convert_hf_to_gguf.py").write_text("x")
    (v / "CMakeLists.txt").write_text("project(llama.cpp)")
    for name in ("ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf", "ggml-vocab-gpt-2.gguf"):
        (v / "models" / name).write_bytes(b"GGUF")
    (v / "models" / "templates" / "t.jinja").write_text("")
    (root / "CHANGELOG.md").write_text("# Changelog\n\n## [0.3.36]\n\n- feat: Update llama.cpp to "
                                       "ggml-org/llama.cpp@0c1e57098aa\n\n## [0.3.35]\n\n- llama.cpp@1111111\n")
    return root


def _check_pruned(dest):
    out = dest / "src"
    assert (out / "src" / "llama.cpp").read_text() == "// engine" and (out / "tools" / "mtmd" / "mtmd.cpp").exists()
    for gone in ("docs", "tests", "examples", "tools/server", "tools/mtmd/legacy-models", "convert_hf_to_gguf.py",
                 "models/templates", "models/ggml-vocab-gpt-2.gguf"):
        assert not (out / gone).exists(), gone
    assert sorted(p.name for p in (out / "models").iterdir()) == ["ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf"]
    info = json.loads((out / "VERSION.json").read_text())
    assert info == {"llama_cpp_python": "0.3.36", "ggml": "0.25.3", "llama_cpp_commit": "0c1e57098aa",
                    "build_number": "unknown (no git in sdist)", "source": B.SDIST_COMMAND}
    assert B.version_info(out) == info  # read back from VERSION.json
    assert not (dest / "_unpack").exists()
    return info


def test_prepare_from_a_folder_and_from_the_tarball(tmp_path):
    root = _sdist(tmp_path)
    assert B.prepare(root, tmp_path / "d1")["ggml"] == "0.25.3"
    _check_pruned(tmp_path / "d1")
    tgz = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(root, arcname=root.name)
    B.prepare(tgz, tmp_path / "d2")
    _check_pruned(tmp_path / "d2")
    assert (root / "vendor" / "llama.cpp" / "docs").exists()  # the source tree itself is untouched


def test_version_info_without_version_json(tmp_path):
    assert B.version_info(tmp_path) == {"llama_cpp_python": B.LLAMA_CPP_PYTHON_VERSION, "ggml": "unknown",
                                        "llama_cpp_commit": "unknown", "build_number": "unknown"}
    (tmp_path / "ggml").mkdir()
    (tmp_path / "ggml" / "CMakeLists.txt").write_text(CMAKE)
    assert B.version_info(tmp_path)["ggml"] == "0.25.3"
    assert B._ggml_version("set(GGML_VERSION_MAJOR 1)") == "unknown"
    assert B._changelog_commit("nothing here") == "unknown"


def test_build_runs_cmake_with_the_recorded_flags(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "VERSION.json").write_text(json.dumps({"llama_cpp_commit": "0c1e570"}))
    calls = []
    monkeypatch.setattr(B.subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    res = B.build(tmp_path, arch="80", jobs=3, extra=["-DCUDAToolkit_ROOT=/x"])
    (cfg, kw), (bld, _) = calls
    assert cfg[:3] == ["cmake", "-S", str(tmp_path / "src")] and kw["check"] is True
    assert "-DCMAKE_CUDA_ARCHITECTURES=80" in cfg and "-DGGML_CUDA=ON" in cfg and cfg[-1] == "-DCUDAToolkit_ROOT=/x"
    assert "-DLLAMA_BUILD_COMMIT=0c1e570" in cfg and "-DGGML_BUILD_COMMIT=0c1e570" in cfg
    assert bld == ["cmake", "--build", str(tmp_path / "build"), "--target", *B.TARGETS, "-j", "3"]
    assert res["flags"] == " ".join(B.cmake_flags("80")) and res["bin"] == str(tmp_path / "build" / "bin")
    assert "CMAKE_CUDA_ARCHITECTURES=90" in B.BUILD_FLAGS  # what rows record: the H200 build
    # a code-changing option is configured and recorded; a machine-specific one only configured
    calls.clear()
    res = B.build(tmp_path, extra=["-DCUDAToolkit_ROOT=/x"], defines=("-DGGML_CUDA_FORCE_CUBLAS=ON",))
    assert "-DGGML_CUDA_FORCE_CUBLAS=ON" in calls[0][0] and res["flags"].endswith("-DGGML_CUDA_FORCE_CUBLAS=ON")
    assert "CUDAToolkit_ROOT" not in res["flags"]


def test_pack_keeps_tools_and_libraries_then_unpacks(tmp_path):
    bindir = tmp_path / "dest" / "build" / "bin"
    bindir.mkdir(parents=True)
    for name in ("llama-bench", "llama-quantize", "libggml-cuda.so", "libllama.so.0", "llama-cli", "notes.txt"):
        (bindir / name).write_text(name)
    (tmp_path / "dest" / "src").mkdir()
    (tmp_path / "dest" / "src" / "VERSION.json").write_text("{}")
    tar = B.pack(tmp_path / "dest", tmp_path / "b.tar.xz")
    with tarfile.open(tar) as t:
        names = sorted(t.getnames())
    assert names == ["bin/VERSION.json", "bin/libggml-cuda.so", "bin/libllama.so.0", "bin/llama-bench",
                     "bin/llama-quantize"]
    out = B.unpack(tar, tmp_path / "elsewhere")
    assert out == tmp_path / "elsewhere" / "bin" and (out / "llama-bench").read_text() == "llama-bench"


def test_command_line(tmp_path, monkeypatch, capsys):
    root = _sdist(tmp_path)
    B.main(["prepare", str(root), str(tmp_path / "d")])
    assert json.loads(capsys.readouterr().out)["llama_cpp_commit"] == "0c1e57098aa"
    monkeypatch.setattr(B.subprocess, "run", lambda cmd, **kw: None)
    B.main(["build", str(tmp_path / "d"), "--arch", "89", "--extra=-DX=1"])
    assert json.loads(capsys.readouterr().out)["flags"].count("ARCHITECTURES=89") == 1
    (tmp_path / "d" / "build" / "bin").mkdir(parents=True)
    (tmp_path / "d" / "build" / "bin" / "llama-bench").write_text("b")
    B.main(["pack", str(tmp_path / "d"), str(tmp_path / "x.tar.xz")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "x.tar.xz")
    B.main(["unpack", str(tmp_path / "x.tar.xz"), str(tmp_path / "u")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "u" / "bin")
    with pytest.raises(SystemExit):
        B.main(["frobnicate"])
