"""Where fitted cost models live: JSON parameters with a sidecar, never pickles."""
from __future__ import annotations

import os
from pathlib import Path


def user_dir() -> Path:
    return Path(os.environ.get("ADVISOR_HOME", Path.home() / ".cache" / "advisor"))


def user_model_path() -> Path:
    return user_dir() / "fitted.json"
