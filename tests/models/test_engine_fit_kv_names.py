"""Engine rows name KV caches and precisions their own way (vLLM --kv-cache-dtype, llama.cpp --cache-type-k);
methods.yaml's engine_kv_dtypes / engine_precision_labels map them to catalog methods (models.engine_fit)."""
import csv
from pathlib import Path

from profiles import load

from models.engine_fit import kv_of, precision_of

DATA = Path(__file__).resolve().parents[2] / "measurement" / "data"


def test_each_engine_kv_dtype_names_one_kv_method():
    cat = load()
    names = [str(n).lower() for m in cat.methods_of("kv") for n in m.get("engine_kv_dtypes") or ()]
    assert len(names) == len(set(names))
    assert kv_of(cat) == {"fp16": "kv-fp16", "bf16": "kv-fp16", "auto": "kv-fp16", "f16": "kv-fp16",
                          "fp8": "kv-fp8", "fp8_e4m3": "kv-fp8", "fp8_e5m2": "kv-fp8",
                          "q8_0": "kv-q8_0", "q4_0": "kv-q4_0"}
    assert precision_of(cat) == {"fp8-wo": "fp8"}


def test_every_shipped_engine_row_kv_dtype_maps_to_a_kv_method():
    kvs = kv_of(load())
    files = list((DATA / "published_engine").glob("*.csv")) + list((DATA / "llamacpp").glob("*.csv"))
    seen = set()
    for f in files:
        with open(f, newline="") as fh:
            seen |= {str(r.get("kv_dtype") or "").lower() for r in csv.DictReader(fh)}
    assert seen - {""} and not (seen - {""}) - set(kvs)
