"""The llama.cpp sweeps (``--plan`` of :mod:`measurement.llamacpp.run`): per plan, an ordered list of
(model, GGUF type, benchmarks), each benchmark a llama-bench (``lb``: prompt sizes ``p``, generation ``n``,
depths ``d``, KV type) or llama-batched-bench (``bb``: prompt ``npp``, generation ``ntg``, parallel
sequences ``npl``) run. Steps run in order, each as its file is ready, until the call's deadline."""
from __future__ import annotations

LB_FULL = {"kind": "lb", "p": [512, 2048, 8192], "n": [128], "d": [0, 4096], "kv": "f16"}
BB = {"kind": "bb", "npp": 512, "ntg": 128, "npl": [1, 2, 4, 8, 16, 32, 64], "reps": 3, "kv": "f16"}


def LB_KV(kv):
    return {"kind": "lb", "p": [512, 8192], "n": [128], "d": [0, 4096], "kv": kv}


LB_SPLIT = {"kind": "lb", "p": [512, 2048], "n": [128], "d": [0], "kv": "f16", "reps": 3,
            "sm": ["none", "layer", "row"]}
ALL_TYPES = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS"]


def _model_steps(model, types, bb_types=(), kv_types=(), reps=5):
    """Priority order inside one model: every type at batch 1, then batches, then KV types."""
    steps = [(model, q, [dict(LB_FULL, reps=reps)]) for q in types]
    steps += [(model, q, [dict(BB)]) for q in bb_types]
    steps += [(model, q, [dict(LB_KV(kv), reps=reps) for kv in ("q8_0", "q4_0")]) for q in kv_types]
    return steps


PLANS = {
    # call 1: the small models, everything end to end
    "smoke": (_model_steps("llama3.2-1b", ALL_TYPES, ["F16", "Q4_K_M"], ["F16"])
              + _model_steps("llama3.2-3b", ALL_TYPES, ["F16", "Q4_K_M", "Q8_0"], ["Q4_K_M"])),
    # call 2: the 8B, every type at batch 1, then batches, then KV types; a CUDA-graphs-off diagnostic of
    # the F16 decode; then the 3B if time is left (same vocabulary file)
    "8b": (_model_steps("llama3.1-8b", ["F16", "Q4_K_M", "Q8_0", "Q4_0", "Q6_K", "Q5_K_M", "IQ4_XS"],
                        ["F16", "Q4_K_M", "Q8_0", "Q4_0"], ["F16", "Q4_K_M"])
           + [("llama3.1-8b", "F16", [{"kind": "lb", "p": [0], "n": [128], "d": [0], "kv": "f16", "reps": 5,
                                       "env": {"GGML_CUDA_DISABLE_GRAPHS": "1"},
                                       "notes": "diagnostic: GGML_CUDA_DISABLE_GRAPHS=1"}])]
           + _model_steps("llama3.2-3b", ["F16", "Q4_K_M", "Q8_0", "Q4_0"], ["Q4_K_M"], [], reps=4)),
    # call 1 (while the engine builds on the device): the 1B end to end, then two other architectures
    "first": (_model_steps("llama3.2-1b", ALL_TYPES, ["F16", "Q4_K_M"], ["F16"])
              + _model_steps("qwen2.5-7b", ["F16", "Q4_K_M", "Q8_0", "Q4_0"], ["Q4_K_M"], [], reps=4)
              + _model_steps("mistral-7b", ["F16", "Q4_K_M", "Q8_0", "Q4_0"], ["Q4_K_M"], [], reps=4)
              + _model_steps("llama3.2-3b", ALL_TYPES, ["Q4_K_M"], [])),
    # call 3: the other architectures, interleaved so the slow K-quant quantizations overlap benchmarks
    "others": [("mistral-7b", "F16", [dict(LB_FULL, reps=4)]),
               ("llama2-13b", "F16", [dict(LB_FULL, reps=4)]),
               ("mistral-7b", "Q4_K_M", [dict(LB_FULL, reps=4)]),
               ("llama2-13b", "Q4_0", [dict(LB_FULL, reps=4)]),
               ("mistral-7b", "Q4_K_M", [dict(BB)]),
               ("llama2-13b", "Q4_0", [dict(BB)]),
               ("mistral-7b", "Q8_0", [dict(LB_FULL, reps=4)]),
               ("llama2-13b", "Q4_K_M", [dict(LB_FULL, reps=4)]),
               ("mistral-7b", "Q4_0", [dict(LB_FULL, reps=4)]),
               ("llama2-13b", "Q8_0", [dict(LB_FULL, reps=4)])],
    # kernel types measured on one model only so far, on a second architecture (Mistral 7B)
    "mistral2": [("mistral-7b", "Q8_0", [dict(BB, npl=[1, 4, 16, 64])]),
                 ("mistral-7b", "Q6_K", [dict(LB_FULL, reps=3)]),
                 ("mistral-7b", "IQ4_XS", [dict(LB_FULL, reps=3)]),
                 ("mistral-7b", "Q5_K_M", [dict(LB_FULL, reps=3)])],
    # kernel types measured on one model only (Q6_K, Q5_K_M, IQ4_XS, batched Q8_0), on two more architectures,
    # so that leaving a model out still leaves rows of every kernel; then a new size (Llama 3.2 3B) and the 13B
    "kq_a": [(m, q, [dict(LB_FULL, reps=3)]) for m in ("mistral-7b", "qwen2.5-7b") for q in ("Q6_K", "IQ4_XS", "Q5_K_M")]
            + [("mistral-7b", "Q8_0", [dict(BB, npl=[1, 4, 16, 64])])],
    "kq_b": (_model_steps("llama3.2-3b", ["F16", "Q6_K", "IQ4_XS", "Q5_K_M", "Q4_K_M", "Q8_0", "Q4_0"],
                          ["Q8_0", "Q6_K"], [], reps=3)
             + [("llama2-13b", q, [dict(LB_FULL, reps=3)]) for q in ("Q6_K", "IQ4_XS", "Q5_K_M")]),
    # what kq_a's first call left (its build starved the quantizer: Q6_K of the 7B took 337 s beside it)
    "kq_c": [("mistral-7b", "IQ4_XS", [dict(LB_FULL, reps=3)]), ("qwen2.5-7b", "Q6_K", [dict(LB_FULL, reps=3)]),
             ("mistral-7b", "Q5_K_M", [dict(LB_FULL, reps=3)]), ("qwen2.5-7b", "IQ4_XS", [dict(LB_FULL, reps=3)]),
             ("mistral-7b", "Q8_0", [dict(BB, npl=[1, 4, 16, 64])])],
    # batched K/IQ types on more than one model (until now Q6_K batches existed for the 3B only, so leaving the
    # 3B out left none), then what kq_c left; the 1B first since its quantizations take seconds
    "kq_d": ([("llama3.2-1b", q, [dict(BB)]) for q in ("Q6_K", "Q5_K_M", "IQ4_XS", "Q4_0", "Q8_0")]
             + [("qwen2.5-7b", "Q6_K", [dict(LB_FULL, reps=3), dict(BB, npl=[1, 4, 16, 64])]),
                ("mistral-7b", "Q5_K_M", [dict(LB_FULL, reps=3), dict(BB, npl=[1, 4, 16, 64])]),
                ("qwen2.5-7b", "IQ4_XS", [dict(LB_FULL, reps=3)]),
                ("mistral-7b", "Q8_0", [dict(BB, npl=[1, 4, 16, 64])]),
                ("qwen2.5-7b", "Q5_K_M", [dict(LB_FULL, reps=3)])]),
    # kq_d's second call on the same warm machine (build reused): what its deadline left
    "kq_e": [("mistral-7b", "Q5_K_M", [dict(BB, npl=[1, 4, 16, 64])]), ("qwen2.5-7b", "IQ4_XS", [dict(LB_FULL, reps=3)]),
             ("mistral-7b", "Q8_0", [dict(BB, npl=[1, 4, 16, 64])]), ("qwen2.5-7b", "Q5_K_M", [dict(LB_FULL, reps=3)]),
             ("mistral-7b", "IQ4_XS", [dict(BB, npl=[1, 4, 16, 64])])],
    # a third call on the warm machine: batched K/IQ types on the 8B
    "kq_f": [("llama3.1-8b", "Q6_K", [dict(BB, npl=[1, 4, 16, 64])]), ("llama3.1-8b", "Q5_K_M", [dict(BB, npl=[1, 4, 16, 64])]),
             ("mistral-7b", "IQ4_XS", [dict(BB, npl=[1, 4, 16, 64])])],
    # attention without flash attention (-fa 0), as most published llama.cpp rows ran it (builds before PR #5021
    # had none; llama-bench defaulted to it until 2025): the scores' traffic the engine cost model adds
    "fa_off": [(m, q, [dict(LB_FULL, reps=3, fa="0")])
               for m, q in (("llama3.2-1b", "F16"), ("llama3.1-8b", "F16"), ("qwen2.5-7b", "F16"),
                            ("llama3.1-8b", "Q4_K_M"), ("llama3.2-3b", "Q4_K_M"), ("llama2-13b", "F16"))],
    # a build with -DGGML_CUDA_FORCE_CUBLAS=ON (device.sh DEFINES): quantized prompts through the FP16 cuBLAS GEMM on a
    # dequantized copy, as builds before llama.cpp PR #8075 ran them (engines.yaml earlier_builds)
    "cublas_pp": [(m, q, [{"kind": "lb", "p": [512, 2048, 8192], "n": [128], "d": [0], "kv": "f16", "reps": 3}])
                  for m, q in (("llama3.2-1b", "Q4_0"), ("llama3.2-3b", "Q4_K_M"), ("llama3.1-8b", "Q4_K_M"),
                               ("llama3.1-8b", "Q8_0"), ("qwen2.5-7b", "Q4_K_M"))],
    # 2 GPUs (issue 12 part 5): one GPU, layer split and row split in one llama-bench call per file
    "split2": [(m, q, [dict(LB_SPLIT), dict(BB, npl=[1, 4, 16, 64], sm="layer"), dict(BB, npl=[1, 4, 16, 64], sm="row")])
               for m, q in (("llama3.1-8b", "Q4_K_M"), ("llama3.1-8b", "F16"), ("qwen2.5-14b", "Q4_K_M"),
                            ("qwen2.5-14b", "F16"), ("llama3.1-8b", "Q8_0"))],
}
