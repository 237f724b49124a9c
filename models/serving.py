"""Serving latency under load: continuous batching with queueing (the model `advisor plan` uses).

One replica keeps up to ``c`` sequences decoding at once (continuous batching). Each decode
iteration takes ``tau0`` (the predicted decode step at batch ``c``, a conservative choice: the
batch is often less full). New requests are prefilled whole, between iterations, and take
``t_pre`` each; at arrival rate ``lam`` per replica that steals a fraction ``lam x t_pre`` of the
time, so a sequence gets a token every ``tau = tau0 / (1 - lam x t_pre)`` seconds.

- TPOT (time per output token, vLLM's per-request definition: (end - first token) / (tokens - 1))
  is ``tau`` for every request.
- A request holds a slot for ``S = gen_len x tau``. Waiting for a free slot is modelled as M/M/c
  (Erlang C): ``P(W > t) = C(c, lam S) exp(-(c/S - lam) t)``. Service times are nearly
  deterministic here, so M/M/c over-estimates the wait (conservative); :func:`simulate` is a small
  discrete-event simulation that tests this.
- TTFT p95 = p95 slot wait + half an iteration (the one in flight) + ``t_pre`` + ``tau0``.
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits, M/M/c with offered load ``a = lam x S`` (< c)."""
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    term, s = 1.0, 1.0  # a^k / k!, summed for k < c
    for k in range(1, c):
        term *= a / k
        s += term
    last = term * a / c / (1 - a / c)  # a^c / c! x c / (c - a)
    return last / (s + last)


def wait_quantile(c: int, lam: float, service_s: float, q: float = 0.95) -> float:
    """Slot-wait time exceeded by a fraction ``1 - q`` of requests (M/M/c); inf if unstable."""
    if lam <= 0:
        return 0.0
    mu = 1.0 / service_s
    if lam >= c * mu:
        return math.inf
    pw = erlang_c(c, lam / mu)
    if pw <= 1 - q:
        return 0.0
    return math.log(pw / (1 - q)) / (c * mu - lam)


@dataclass(frozen=True)
class ServingLatency:
    tau_s: float          # seconds per output token per request (TPOT)
    ttft_p95_s: float
    utilisation: float    # fraction of slots busy (lam x S / c)
    stable: bool


def serving_latency(lam: float, c: int, tau0_s: float, t_pre_s: float, gen_len: int) -> ServingLatency:
    busy_pre = lam * t_pre_s
    if busy_pre >= 1:
        return ServingLatency(math.inf, math.inf, math.inf, False)
    tau = tau0_s / (1 - busy_pre)
    service = gen_len * tau
    rho = lam * service / c
    w95 = wait_quantile(c, lam, service)
    if not math.isfinite(w95):
        return ServingLatency(tau, math.inf, rho, False)
    return ServingLatency(tau, w95 + 0.5 * tau0_s + t_pre_s + tau0_s, rho, True)


def simulate(lam: float, c: int, service_s: float, n: int = 20000, seed: int = 0) -> list[float]:
    """Discrete-event simulation: Poisson arrivals, ``c`` slots, FCFS queue, deterministic service.
    Returns each request's wait for a slot (seconds)."""
    rng = random.Random(seed)
    t = 0.0
    free_at = [0.0] * c  # heap of the times each slot frees up
    heapq.heapify(free_at)
    waits = []
    for _ in range(n):
        t += rng.expovariate(lam)
        slot = heapq.heappop(free_at)
        start = max(t, slot)
        waits.append(start - t)
        heapq.heappush(free_at, start + service_s)
    return waits
