"""Engine benchmark rows: published (``measurement/data/published_engine/*.csv``) and measured here
(``measurement/data/llamacpp/rows.csv``), in one long format (one figure per row; the columns are
described in ``measurement/data/published_engine/README.md``). pandas only; never imports torch."""
from __future__ import annotations

from pathlib import Path

from profiles.dtypes import FP16

DATA_DIR = Path(__file__).resolve().parent / "data"
PUBLISHED_DIR = DATA_DIR / "published_engine"
MEASURED_PATHS = (DATA_DIR / "llamacpp" / "rows.csv",)
REQUIRED = ("engine", "gpu", "model", "precision", "metric", "value", "source_id")
NUMERIC = ("num_gpus", "batch", "prompt_len", "gen_len", "depth", "value", "prompt_len_est", "decode_ctx",
           "running_batch")
NOT_SPEED = ("gguf_quality.csv",)


class RowsError(ValueError):
    """A rows file is malformed; the message names the file, row and column."""


def _read(path: Path, kind: str):
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise RowsError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise RowsError(f"{path}: missing column(s) {', '.join(missing)}")
    df = df.replace("", None)
    for c in NUMERIC:
        if c in df:
            num = pd.to_numeric(df[c], errors="coerce")
            bad = df[c].notna() & num.isna()
            if bad.any():
                i = int(bad.idxmax())
                raise RowsError(f"{path}: row {i + 2}, column {c}: '{df[c][i]}' is not a number")
            df[c] = num
    if "flash_attn" in df:  # on / off, or empty: not stated (read as on, every engine's default today)
        bad = df["flash_attn"].notna() & ~df["flash_attn"].isin(("on", "off"))
        if bad.any():
            i = int(bad.idxmax())
            raise RowsError(f"{path}: row {i + 2}, column flash_attn: '{df['flash_attn'][i]}' is not on, off or empty")
    df["kind"] = kind
    df["file"] = path.name
    if "status" in df:
        df = df[df["status"].fillna("ok") == "ok"]
    return df


def load_engine_rows(published: bool = True, measured: bool = True, extra=()):
    """All engine rows with a ``kind`` column (published / measured). Rows with a non-positive or
    non-finite value are dropped (they cannot be scored)."""
    import numpy as np
    import pandas as pd

    frames = []
    if published and PUBLISHED_DIR.exists():
        frames += [_read(p, "published") for p in sorted(PUBLISHED_DIR.glob("*.csv")) if p.name not in NOT_SPEED]
    if measured:
        frames += [_read(p, "measured") for p in MEASURED_PATHS if p.exists()]
    frames += [_read(Path(p), "user") for p in extra]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=[*REQUIRED, "kind"])
    df = pd.concat(frames, ignore_index=True)
    df = df[np.isfinite(df["value"]) & (df["value"] > 0)]
    for c, d in (("num_gpus", 1), ("depth", 0), ("kv_dtype", FP16), ("parallel", "none")):  # 16-bit KV by default
        if c not in df:
            df[c] = d
        df[c] = df[c].fillna(d)
    return df.reset_index(drop=True)
