"""measurement.mlenergy_lengths' command line: it reads each row's leaderboard JSON with ``git show`` at the
commit its URL names (subprocess faked here), writes the CSV with the two new columns to stdout and leaves
other rows as they were; a wrong argument count is a usage error."""
from __future__ import annotations

import csv
import io
import json
import subprocess
from types import SimpleNamespace as NS

from measurement import mlenergy_lengths as ml

COMMIT = "b" * 40
PATH = "public/data/models/meta-llama__Llama-3.1-8B-Instruct__lm-arena-chat.json"
DOC = {"configurations": [{"gpu_model": "H100", "num_gpus": 1, "max_num_seqs": 64, "avg_output_len": 301.6,
                           "output_length_distribution": {"bins": [0, 200, 400], "counts": [1, 3]}}]}


def test_main_fills_lengths_from_git_show(tmp_path, monkeypatch, capsys):
    src = tmp_path / "vllm_sglang.csv"
    with open(src, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["source_id", "gen_len", "location", "url", "value"])
        w.writeheader()
        w.writerow({"source_id": ml.SOURCE, "gen_len": "", "value": "1.5",
                    "location": "configurations entry gpu_model=H100, num_gpus=1, max_num_seqs=64",
                    "url": f"https://github.com/ml-energy/leaderboard/blob/{COMMIT}/{PATH}"})
        w.writerow({"source_id": "vllm-docs", "gen_len": "128", "location": "", "url": "", "value": "9"})
    calls = []

    def run(cmd, check=False, capture_output=False, text=False):
        calls.append((cmd, check))
        return NS(stdout=json.dumps(DOC))

    monkeypatch.setattr(subprocess, "run", run)
    assert ml.main(["/data/leaderboard", str(src)]) == 0
    assert calls == [(["git", "-C", "/data/leaderboard", "show", f"{COMMIT}:{PATH}"], True)]
    out = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    # E[o] = (100 + 3 x 300) / 4 = 250, E[o^2] = (100^2 + 3 x 300^2) / 4 = 70000: 70000 / 500 = 140
    assert out[0]["gen_len"] == "302" and out[0]["prompt_len_est"] == "179" and out[0]["decode_ctx"] == "319"
    assert out[0]["value"] == "1.5"
    assert out[1] == {"source_id": "vllm-docs", "gen_len": "128", "location": "", "url": "", "value": "9",
                      "prompt_len_est": "", "decode_ctx": ""}
    assert src.read_text().count("decode_ctx") == 0  # the input is never overwritten


def test_usage(capsys):
    assert ml.main(["only-one"]) == 2
    assert "usage: python -m measurement.mlenergy_lengths" in capsys.readouterr().err
