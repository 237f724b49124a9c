"""Reproducible llama.cpp build for the measurement package (issue 12).

The engine source is the llama.cpp tree vendored in the llama-cpp-python source distribution on PyPI
(pinned below). ``prepare`` prunes that tree (docs, tests, examples, most vocabularies) into a small
folder that travels to the GPU machine; ``build`` configures and builds the benchmark tools for one CUDA
architecture with fixed flags; ``pack`` / ``unpack`` move a finished build (bin/ and the shared
libraries) as one xz tarball so a GPU call can skip the ~4 minute build.

Every measured row records ``engine_version`` and ``build_flags`` from ``version_info`` / ``BUILD_FLAGS``.

Command line::

    python -m measurement.llamacpp.build prepare SDIST_OR_DIR DEST      # prune into DEST/src
    python -m measurement.llamacpp.build build DEST [--arch 90] [--jobs N]
    python -m measurement.llamacpp.build pack DEST OUT.tar.xz
    python -m measurement.llamacpp.build unpack OUT.tar.xz DEST
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_COMMAND = (f"pip download --no-deps --no-binary=:all: llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}")
TARGETS = ("llama-bench", "llama-batched-bench", "llama-quantize")

# vocabularies kept: Llama 3 (BPE, 128256), Llama 2 / Mistral (SentencePiece, 32000), Qwen2 (BPE)
KEEP_VOCABS = ("ggml-vocab-llama-bpe.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-qwen2.gguf")
PRUNE_DIRS = ("docs", "media", "tests", "examples", "pocs", "tools/server", "tools/ui", ".github",
              "benches", "app", "skills", "ci", "grammars", "requirements", "conversion",
              "tools/mtmd/legacy-models")
PRUNE_FILES = ("convert_hf_to_gguf.py", "convert_hf_to_gguf_update.py", "convert_lora_to_gguf.py",
               "convert_llama_ggml_to_gguf.py", "build-xcframework.sh", "flake.nix")


def cmake_flags(arch: str = "90", defines: tuple[str, ...] = ()) -> list[str]:
    """The build's cmake flags; ``defines``: options that change the code built (e.g. -DGGML_CUDA_FORCE_CUBLAS=ON,
    the FP16 cuBLAS prompt path that quantized types took before llama.cpp PR #8075), recorded in every row."""
    return [
        "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}", "-DGGML_CUDA_FA_ALL_QUANTS=OFF",
        "-DGGML_NATIVE=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_APP=OFF",
        "-DCMAKE_BUILD_TYPE=Release", *defines,
    ]


BUILD_FLAGS = " ".join(cmake_flags())  # what rows record


def _changelog_commit(text: str) -> str:
    """The llama.cpp commit of the newest release entry in llama-cpp-python's CHANGELOG."""
    m = re.search(r"llama\.cpp to ggml-org/llama\.cpp@([0-9a-f]{7,40})", text)
    if not m:
        m = re.search(r"llama\.cpp@([0-9a-f]{7,40})", text)
    return m.group(1) if m else "unknown"


def _ggml_version(cmake_text: str) -> str:
    parts = [re.search(rf"set\(GGML_VERSION_{k} (\d+)\)", cmake_text) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(p.group(1) for p in parts) if all(parts) else "unknown"


def version_info(src: Path) -> dict:
    """Versions recorded in VERSION.json by ``prepare`` (or read from the tree)."""
    src = Path(src)
    vj = src / "VERSION.json"
    if vj.exists():
        return json.loads(vj.read_text())
    ggml = _ggml_version((src / "ggml" / "CMakeLists.txt").read_text()) if (src / "ggml").exists() else "unknown"
    return {"llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "ggml": ggml, "llama_cpp_commit": "unknown",
            "build_number": "unknown"}


def engine_version_string(info: dict) -> str:
    return (f"llama-cpp-python {info.get('llama_cpp_python')} / llama.cpp@{info.get('llama_cpp_commit')}"
            f" / ggml {info.get('ggml')}")


def prepare(sdist: Path, dest: Path) -> dict:
    """Unpack (if a tarball) and prune vendor/llama.cpp into dest/src; returns the version info."""
    sdist, dest = Path(sdist), Path(dest)
    work = dest / "_unpack"
    if sdist.is_file():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        with tarfile.open(sdist) as t:
            t.extractall(work, filter="data") if sys.version_info >= (3, 12) else t.extractall(work)
        root = next(work.iterdir())
    else:
        root = sdist
    vendor = root / "vendor" / "llama.cpp"
    out = dest / "src"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(vendor, out, symlinks=True)
    for d in PRUNE_DIRS:
        shutil.rmtree(out / d, ignore_errors=True)
    for f in PRUNE_FILES:
        (out / f).unlink(missing_ok=True)
    for f in (out / "models").iterdir():
        if f.name not in KEEP_VOCABS:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    changelog = (root / "CHANGELOG.md").read_text() if (root / "CHANGELOG.md").exists() else ""
    info = {"llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
            "ggml": _ggml_version((out / "ggml" / "CMakeLists.txt").read_text()),
            "llama_cpp_commit": _changelog_commit(changelog), "build_number": "unknown (no git in sdist)",
            "source": SDIST_COMMAND}
    (out / "VERSION.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return info


def build(dest: Path, arch: str = "90", jobs: int | None = None, log=None, extra: list[str] | None = None,
          defines: tuple[str, ...] = ()) -> dict:
    """Configure and build TARGETS in dest/build; returns {seconds, flags, bin}.

    ``extra``: machine-specific cmake arguments that do not change the code built (library and include
    paths, e.g. a cuBLAS from its pip wheel and a libcuda stub on a machine without a driver).
    """
    dest = Path(dest)
    src, bdir = dest / "src", dest / "build"
    info = version_info(src)
    t0 = time.time()
    # explicit build number/commit: the source dir may sit inside another git repository
    cfg = ["cmake", "-S", str(src), "-B", str(bdir), "-G", "Ninja", *cmake_flags(arch, defines),
           "-DLLAMA_BUILD_NUMBER=0", f"-DLLAMA_BUILD_COMMIT={info.get('llama_cpp_commit', 'unknown')}",
           f"-DGGML_BUILD_COMMIT={info.get('llama_cpp_commit', 'unknown')}", *(extra or [])]
    subprocess.run(cfg, check=True, stdout=log, stderr=subprocess.STDOUT if log else None)
    cmd = ["cmake", "--build", str(bdir), "--target", *TARGETS, "-j", str(jobs or os.cpu_count() or 4)]
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT if log else None)
    return {"seconds": round(time.time() - t0, 1), "flags": " ".join(cmake_flags(arch, defines)), "bin": str(bdir / "bin")}


def pack(dest: Path, out: Path) -> Path:
    """xz tarball of build/bin (TARGETS and every shared library there) + VERSION.json."""
    dest, out = Path(dest), Path(out)
    bindir = dest / "build" / "bin"
    with tarfile.open(out, "w:xz", preset=6) as t:
        for f in sorted(bindir.iterdir()):
            if f.name in TARGETS or ".so" in f.name:
                t.add(f, arcname=f"bin/{f.name}")
        vj = dest / "src" / "VERSION.json"
        if vj.exists():
            t.add(vj, arcname="bin/VERSION.json")
    return out


def unpack(tarball: Path, dest: Path) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as t:
        t.extractall(dest)
    return dest / "bin"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m measurement.llamacpp.build")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare"); p.add_argument("sdist"); p.add_argument("dest")
    b = sub.add_parser("build"); b.add_argument("dest"); b.add_argument("--arch", default="90")
    b.add_argument("--jobs", type=int)
    b.add_argument("--extra", action="append", default=[], help="extra cmake argument (repeatable)")
    b.add_argument("--define", action="append", default=[], help="a code-changing cmake option, recorded (repeatable)")
    k = sub.add_parser("pack"); k.add_argument("dest"); k.add_argument("out")
    u = sub.add_parser("unpack"); u.add_argument("tarball"); u.add_argument("dest")
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        print(json.dumps(prepare(Path(a.sdist), Path(a.dest))))
    elif a.cmd == "build":
        print(json.dumps(build(Path(a.dest), a.arch, a.jobs, extra=a.extra, defines=tuple(a.define))))
    elif a.cmd == "pack":
        print(pack(Path(a.dest), Path(a.out)))
    else:
        print(unpack(Path(a.tarball), Path(a.dest)))


if __name__ == "__main__":
    main()
