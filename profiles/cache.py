"""A content-keyed JSON cache for parsed catalogs and fitted tables (``~/.cache/advisor``, or
``$ADVISOR_CACHE_DIR``). A key is the SHA-256 of the inputs, so an edited file is never served stale; a
cache that cannot be read or written is ignored (the caller recomputes)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("ADVISOR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "advisor")
    return Path(base)


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:24]


def get(kind: str, key: str):
    try:
        return json.loads((cache_dir() / f"{kind}-{key}.json").read_text())
    except (OSError, ValueError):
        return None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a reader never
    sees half a file, and a failed write leaves the old file. OSError propagates (the folder must exist)."""
    import tempfile
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def put(kind: str, key: str, value) -> None:
    try:
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        write_text_atomic(d / f"{kind}-{key}.json", json.dumps(value))
    except (OSError, TypeError, ValueError):
        pass
