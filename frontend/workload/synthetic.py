"""Seeded synthetic workloads: ShareGPT-like chat requests."""

from __future__ import annotations

import numpy as np

from frontend.config.schema import Dist, SyntheticWorkload
from frontend.workload.request import Request, TokenContent

SHARED_PREFIX_KEY = 1


def sample_dist(d: Dist, rng: np.random.Generator, n: int) -> np.ndarray:
    if d.dist == "constant":
        x = np.full(n, float(d.value))
    elif d.dist == "lognormal":
        # `mean` is the distribution's mean (not the underlying normal's), so
        # mu = ln(mean) - sigma^2 / 2.
        sigma = float(d.sigma or 0.0)
        mu = np.log(float(d.mean)) - sigma * sigma / 2
        x = rng.lognormal(mu, sigma, n)
    elif d.dist == "uniform":
        x = rng.uniform(float(d.low), float(d.high), n)
    elif d.dist == "exponential":
        x = rng.exponential(float(d.mean), n)
    else:
        x = rng.choice(np.asarray(d.values, dtype=float), n)
    return np.clip(np.rint(x), d.min, d.max).astype(np.int64)


def arrival_times_ns(process: str, rate_per_s: float, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    mean_gap = 1e9 / rate_per_s
    if process == "poisson":
        gaps = rng.exponential(mean_gap, n)
    elif process == "gamma":
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, mean_gap / shape, n)
    elif process == "constant":
        gaps = np.full(n, mean_gap)
    else:  # burst: everything at t=0
        gaps = np.zeros(n)
    t = np.cumsum(gaps)
    t -= t[0]
    return t.astype(np.int64)


def synthetic_requests(cfg: SyntheticWorkload, seed: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    n = cfg.num_requests
    arrivals = arrival_times_ns(cfg.arrival.process, cfg.arrival.rate_per_s, cfg.arrival.cv, n, rng)
    prompts = sample_dist(cfg.prompt_tokens, rng, n)
    outputs = sample_dist(cfg.output_tokens, rng, n)
    reqs = []
    for i in range(n):
        p = int(prompts[i]) + cfg.shared_prefix_tokens
        content = TokenContent()
        if cfg.shared_prefix_tokens:
            content = TokenContent(segments=[(SHARED_PREFIX_KEY, cfg.shared_prefix_tokens), (1000 + i, int(prompts[i]))])
        reqs.append(Request(request_id=f"req-{i}", arrival_ns=int(arrivals[i]), input_tokens=p,
                            output_tokens=int(outputs[i]), content=content, seq=i))
    return reqs
