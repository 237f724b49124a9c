"""Files a user hands to a command (--data): checked at the edge (regular file, size, CSV with the columns,
physical rows), never unpickled, never overwritten."""
from __future__ import annotations

def _dataset(extra, physical: bool = False):
    """The shipped measured dataset plus the user's CSV files (read with pandas; never pickles); with
    ``physical`` the user's rows must be physical (:func:`check_physical`)."""
    import pandas as pd

    try:
        from measurement.dataset import load_dataset
        frames = [load_dataset()]
    except ImportError:
        frames = []
    for p in extra:
        df = read_user_csv(p)
        if physical:
            check_physical(df, p)
        frames.append(df)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


MAX_DATA_BYTES = 200 * 1024 * 1024


def read_user_csv(path: str):
    """A user's --data file: a regular file under MAX_DATA_BYTES that pandas parses as CSV with a header;
    anything else exits 2 naming the file and what went wrong (never a traceback, never a pickle)."""
    import os
    import stat

    import pandas as pd

    from .options import _err
    try:
        st_ = os.stat(path)
    except OSError as e:
        _err(f"--data {path}: {e.strerror}")
    if not stat.S_ISREG(st_.st_mode):
        _err(f"--data {path}: not a regular file")
    if st_.st_size > MAX_DATA_BYTES:
        _err(f"--data {path}: {st_.st_size / 1e6:.0f} MB is over the {MAX_DATA_BYTES / 1e6:.0f} MB limit")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        _err(f"--data {path}: not a CSV file with a header row ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
    need = {"gpu", "model", "precision", "batch"}
    if not need <= set(df.columns):
        _err(f"--data {path}: missing columns {', '.join(sorted(need - set(df.columns)))} (the dataset's columns: "
             "see measurement/data/measurements.meta.json)")
    return df


POSITIVE_COLUMNS = ("decode_ms_per_token", "decode_tok_s", "prefill_ms", "peak_mem_gb", "j_per_token", "batch",
                    "prompt_len", "gen_len")


def check_physical(df, path: str) -> None:
    """Refuse the first non-physical ok row: non-finite or non-positive figures, or a decode step faster than
    its roofline by more than 5% (exit 2 with the file, row and column)."""
    import math

    from .options import _err
    rows = df.to_dict("records")
    for i, r in enumerate(rows):
        if str(r.get("status", "ok")) != "ok":
            continue
        line = i + 2  # 1-based, after the header
        for c in POSITIVE_COLUMNS:
            if c not in r or r[c] is None or (isinstance(r[c], float) and math.isnan(r[c]) and c != "batch"):
                continue
            try:
                v = float(r[c])
            except (TypeError, ValueError):
                _err(f"--data {path}: row {line}, column {c}: '{r[c]}' is not a number")
            if not math.isfinite(v) or v <= 0:
                _err(f"--data {path}: row {line}, column {c}: {v} is not a finite positive number")
        roof, step = r.get("roofline_decode_ms"), r.get("decode_ms_per_token")
        try:
            if roof and step and float(step) < 0.95 * float(roof):
                _err(f"--data {path}: row {line}: decode {float(step):.4g} ms/token beats its roofline "
                     f"{float(roof):.4g} ms by more than 5% (a measurement bug)")
        except (TypeError, ValueError):
            _err(f"--data {path}: row {line}: roofline_decode_ms or decode_ms_per_token is not a number")
