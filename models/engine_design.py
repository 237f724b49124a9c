"""Engine rows as a design for the engine cost model: each published or measured row mapped to a query of
:mod:`models.engine_speed` (the catalog's GPU, model, method and the engine's kernel for it, or an earlier
build's kernel where the catalog's ``earlier_builds`` says so), with rows the cost model cannot read counted
by reason. Read by :mod:`models.engine_fit` and :mod:`models.engine_validate`."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from profiles import Catalog, load
from profiles.engines import arch_of

from . import engine_memory as em, engine_speed as es
from .candidate import Candidate

_RUNNING = re.compile(r"avg running batch ([0-9.]+)")
_UB = re.compile(r"micro-?batch size \(-ub\) (\d+)", re.I)
# a finite offered request rate in a row's text ("request rate 4", "request-rate 2", "QPS 8"): its throughput
# is the offered load (rate x lengths) unless the engine saturates, which the row does not say
_RATE = re.compile(r"(?:request[ -]rate|qps)\s*[:=]?\s*\d", re.I)
# a README convention (measurement/data/published_engine/README.md): the source's prompts repeat, so the engine's
# prefix cache serves most prefills and its TTFT and throughput are not a prefill's
PREFIX_CACHED = "prefix cache serves"
# a latency's tail (README `stat`): p90/p95/p99/max of a TPOT, TTFT or request latency over requests, where the cost
# model predicts the typical request
TAIL_STATS = ("p90", "p95", "p99", "max")
# a README convention: a row whose notes say "static batch" timed one batch whose requests start and end together
# (gptSessionBenchmark, bench_one_batch): its TPOT is the batch's decode step with no other request's prompt in
# it, and its first-token latency the prefill of the whole batch
STATIC_BATCH = "static batch"
STATIC_METRIC = {"tpot_ms": "step_ms", "ttft_ms": "batch_ttft_ms"}
# every request sent at once ("request rate inf", trtllm-bench's infinite rate): the engine runs at the batch it picks
_INF_RATE = re.compile(r"(?:request[ -]rate|request_rate)\s*[:=]?\s*inf|infinite rate", re.I)
# a row timed through a server (its client or server named in the row's text) or in process (a benchmark that calls
# the engine directly): a server's decode step pays engine_speed's serve_ms; a row naming neither is read as in process
_SERVED = re.compile(r"genai-perf|aiperf|trtllm-serve|triton|benchmark_serving|bench serve|bench_serving|vllm serve|"
                     r"openai|http(?!s?://)|server|launch_server|nim", re.I)  # "http" but not a URL's scheme
_INPROC = re.compile(r"gptsessionbenchmark|trtllm-bench|static batch|benchmark_throughput|offline|bench_one_batch|"
                     r"llama-bench|batched-bench|llm\.generate|gptmanagerbenchmark|in-process|no http server", re.I)
# NVIDIA's benchmark clients in concurrency mode (GenAI-Perf, AIPerf): every connection opens at once
_WAVES = re.compile(r"genai-perf|aiperf", re.I)
# a README convention: a benchmark client that samples lengths below the nominal ones (sglang.bench_serving's random
# dataset) prints the tokens it sent and received; the row's notes copy them ("actual lengths ...: X input / Y output
# tokens over N requests") and the cost model reads the mean lengths from them, not the nominal ones
_ACTUAL = re.compile(r"actual lengths[^:]*:\s*(\d+) input / (\d+) output tokens over (\d+) requests", re.I)


@dataclass
class Design:
    """The rows of one engine that map to the catalog, as arrays."""

    engine: str
    a: dict                       # es.arrays fields, one array each
    metric: np.ndarray
    batch: np.ndarray
    prompt: np.ndarray
    gen: np.ndarray
    depth: np.ndarray
    y: np.ndarray                 # reported value
    kernel: np.ndarray            # kernel id per row
    source: np.ndarray
    arch: np.ndarray
    gpu: np.ndarray
    kind: np.ndarray              # published / measured
    index: np.ndarray             # row index in the input frame
    model: np.ndarray = None      # catalog model id
    ctx: np.ndarray = None        # mean tokens in context per sequence during decode (None: from the lengths)
    skipped: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.y)

    def take(self, m: np.ndarray) -> "Design":
        sub = {k: v[m] for k, v in self.a.items()}
        return Design(self.engine, sub, *(getattr(self, f)[m] for f in (
            "metric", "batch", "prompt", "gen", "depth", "y", "kernel", "source", "arch", "gpu", "kind", "index")),
            model=None if self.model is None else self.model[m], ctx=None if self.ctx is None else self.ctx[m])


def _num(v, default=0.0) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def kv_of(cat: Catalog) -> dict[str, str]:
    """Engine rows' KV cache dtype names (lower case) -> KV method id, from each KV method's
    ``engine_kv_dtypes`` in methods.yaml."""
    return {str(n).lower(): m.id for m in cat.methods_of("kv") for n in m.get("engine_kv_dtypes") or ()}


def precision_of(cat: Catalog) -> dict[str, str]:
    """Engine rows' precision labels other than a method id -> precision id, from each precision's
    ``engine_precision_labels`` in methods.yaml (vLLM runs an FP8 checkpoint as weight-only FP8 Marlin on
    Ampere: the catalog's fp8 on sm80/86)."""
    return {str(n): m.id for m in cat.methods_of("precision") for n in m.get("engine_precision_labels") or ()}


def _lookup(cat: Catalog, kind: str, name):
    """Catalog entry for a row's GPU or model id, through the catalog's aliases (an ambiguous alias takes
    the catalog's pick); None when unknown."""
    from profiles import UnknownProfileError

    try:
        rid = cat.resolve(kind, str(name)).id
    except UnknownProfileError:
        return None
    return (cat.gpus if kind == "gpu" else cat.llms)[rid]


def _text(r) -> str:
    """A row's location and notes, lower case: where sources state setups the cost model reads."""
    return f"{r.get('location') or ''} {r.get('notes') or ''}".lower()


def _metric_of(r, eng, text: str) -> str:
    """The row's metric; output_tok_s of a tool that times decode alone (engines.yaml decode_only_output_tool:
    llama-batched-bench's S_TG) is decode_out_tok_s; a static batch's TPOT and TTFT are its decode step and
    its whole prefill (:data:`STATIC_METRIC`). ``text``: :func:`_text` of the row."""
    m = str(r["metric"])
    if STATIC_BATCH in text and m in STATIC_METRIC:
        return STATIC_METRIC[m]
    tool = eng.get("decode_only_output_tool")
    if m == "output_tok_s" and tool and tool in text:
        return "decode_out_tok_s"
    return m


def design(df, engine: str, cat: Catalog | None = None) -> Design:
    """Map the rows of ``engine`` to queries; rows naming a GPU, model or method outside the catalog, or a
    method the engine does not run on that GPU, are counted in ``skipped`` (reason -> rows)."""
    cat = cat or load()
    eng = cat.engines[engine]
    cols = {k: [] for k in ("metric", "batch", "prompt", "gen", "depth", "ctx", "y", "kernel", "source", "arch",
                            "gpu", "kind", "index", "model")}
    arrs: dict[str, list] = {}
    skipped: dict[str, int] = {}
    sub = df[df["engine"] == engine]
    mem_frac = float(eng.get("memory_fraction", 0.9))
    kvs, precs, kv16 = kv_of(cat), precision_of(cat), cat.default_method("kv")
    for i, r in sub.iterrows():
        def skip(why):
            skipped[why] = skipped.get(why, 0) + 1
        gpu, llm = _lookup(cat, "gpu", r["gpu"]), _lookup(cat, "model", r["model"])
        if gpu is None or llm is None or gpu.vendor != "nvidia":
            skip("GPU or model not in the catalog (or not NVIDIA)")
            continue
        prec = precs.get(str(r["precision"]), str(r["precision"]))
        kv_name = r.get("kv_dtype")
        kv = kvs.get(str(kv_name).lower()) if kv_name else kv16  # no KV dtype stated: the 16-bit cache
        text = _text(r)
        metric = _metric_of(r, eng, text)
        if prec not in cat.methods or kv is None or metric not in es.METRICS:
            skip("method, KV dtype or metric not modelled")
            continue
        if str(r.get("stat") or "").lower() in TAIL_STATS and (metric.endswith("_ms") or metric == "request_latency_s"):
            skip("a tail percentile of latency (the cost model predicts the typical request)")
            continue
        arch = arch_of(gpu.cc)
        if eng.kernel(prec, arch) is None:
            skip("method not run by the engine on that architecture (catalog)")
            continue
        if not eng.runs_kv(kv, arch):
            kv = kv16  # a published row with a KV dtype the catalog does not list: read as 16-bit
        n = int(_num(r.get("num_gpus"), 1) or 1)
        split = str(r.get("parallel") or "none")
        split = {"none": None, "pp": "layer"}.get(split, split)
        # an older build's kernel for the row's phase (engines.yaml earlier_builds; a throughput row is read as
        # its decode steps), else the catalog's
        phase = "prefill" if es.METRIC_GROUP[metric] == "prefill" else "decode"
        earlier = eng.earlier_kernel(prec, arch, phase, r.get("date_published"), r.get("build_flags")) or (None, None)
        q = es.query(cat, gpu, llm, Candidate(prec, kv=kv), eng, n, split, r.get("flash_attn") != "off", *earlier)
        prompt, gen, depth = _num(r.get("prompt_len"), 0), _num(r.get("gen_len"), 0), _num(r.get("depth"), 0)
        if prompt <= 0:  # a source that does not publish its input length, estimated (README of the data)
            prompt = _num(r.get("prompt_len_est"), 0)
        actual = _ACTUAL.search(text)
        if actual:  # the client's own count of the tokens it sent and received (means per request)
            prompt, gen = (int(actual.group(k)) / int(actual.group(3)) for k in (1, 2))
        ctx = _num(r.get("decode_ctx"), 0) or es.decode_context(prompt, gen, depth)
        if metric in ("prefill_tok_s", "ttft_ms", "batch_ttft_ms") and prompt <= 0:
            skip("prefill row without a prompt length")
            continue
        if es.METRIC_GROUP[metric] == "throughput" and (prompt <= 0 or gen <= 0):
            skip("throughput row without input/output lengths")
            continue
        b = _num(r.get("batch"), 0)
        run = _RUNNING.search(text)
        if run:  # the source states the mean running batch (its `batch` is only the scheduler's cap)
            b = float(run.group(1))
        elif (rb := _num(r.get("running_batch"), 0)) > 0:  # derived from the source where it lets it be (README)
            b = rb
        if metric in ("tpot_ms", "ttft_ms") and not b and _INF_RATE.search(text):
            # a burst: the first requests start together, the rest wait for a slot; its latencies mix that wave with
            # the queue's drain, not the steady state the cost model describes (throughput rows of it are kept)
            skip("latency of a burst (every request sent at once): not the steady state modelled")
            continue
        if metric in ("tpot_ms", "ttft_ms") and not b and ("qps" in text or "request rate" in text):
            skip("latency under a request rate with no stated concurrency")
            continue
        if es.METRIC_GROUP[metric] == "throughput" and _RATE.search(text):
            skip("throughput under a fixed request rate (the offered load, not the engine's capacity)")
            continue
        if es.METRIC_GROUP[metric] != "decode" and PREFIX_CACHED in text:  # a cached prompt leaves decode as it is
            skip("repeated prompts: the prefix cache serves the prefill (not modelled)")
            continue
        kv_tokens = em.kv_capacity_tokens(q, gpu.memory_gb, mem_frac)  # what the KV cache holds at this row's setup
        if metric == "ttft_ms" and b > 1 and b * (prompt + gen) > kv_tokens:
            # the clients outnumber the requests the KV cache holds: TTFT is mostly waiting in the queue
            skip("TTFT at a concurrency beyond the KV cache (queueing, not modelled)")
            continue
        if metric == "ttft_ms" and str(r.get("stat") or "mean") == "mean" and b * prompt > q.prefill_chunk_tokens > 0:
            # a closed-loop client starts all its concurrent requests at once: their prompts overflow one prefill
            # forward, and that first wave's waiting enters the mean (not the median) TTFT
            skip("mean TTFT whose first wave of prompts overflows one prefill forward (start-up queueing, not modelled)")
            continue
        if metric == "ttft_ms" and b > 1 and str(r.get("stat") or "mean") == "mean" and _WAVES.search(text):
            # these clients open every connection at once and, with fixed lengths, their requests finish and
            # restart together: a TTFT waits behind the prefill of the whole wave, which the mean carries
            skip("mean TTFT of a client whose concurrent requests run in waves (GenAI-Perf/AIPerf; not modelled)")
            continue
        held = max(1.0, kv_tokens / max(prompt + gen, 1.0))
        if metric == "tpot_ms" and b > 1 and prompt > 0:  # the running batch is what the KV cache holds
            b = min(b, held)
        if es.METRIC_GROUP[metric] == "throughput":  # likewise: no more requests run at once than the cache holds
            b = min(em.serving_batch(q, gpu.memory_gb, mem_frac, prompt, gen, b or None), held)
        qa = es.arrays(q)
        qa["served"] = 1.0 if _SERVED.search(text) and not _INPROC.search(text) else 0.0  # the row's own client
        ub = _UB.search(str(r.get("notes") or ""))
        if ub:  # llama-bench -ub N: the prompt is processed N tokens per forward
            qa["chunk"] = float(ub.group(1))
        for k, v in qa.items():
            arrs.setdefault(k, []).append(v)
        for k, v in (("metric", metric), ("batch", b or 1.0), ("prompt", prompt), ("gen", gen), ("depth", depth), ("ctx", ctx),
                     ("y", float(r["value"])), ("kernel", q.kernel), ("source", str(r["source_id"])),
                     ("arch", arch), ("gpu", gpu.id), ("kind", str(r.get("kind") or "published")), ("index", i),
                     ("model", llm.id)):
            cols[k].append(v)
    a = {k: np.asarray(v, float) for k, v in arrs.items()}
    obj = ("metric", "kernel", "source", "arch", "gpu", "kind", "model")
    c = {k: np.asarray(v, dtype=object if k in obj else float) for k, v in cols.items()}
    return Design(engine, a, *(c[k] for k in ("metric", "batch", "prompt", "gen", "depth", "y", "kernel", "source",
                                              "arch", "gpu", "kind", "index")), skipped=skipped, model=c["model"],
                  ctx=c["ctx"])
