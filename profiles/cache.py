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


def put(kind: str, key: str, value) -> None:
    try:
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{kind}-{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value))
        tmp.replace(d / f"{kind}-{key}.json")
    except (OSError, TypeError, ValueError):
        pass
