"""Seeded synthetic workloads: ShareGPT-like chat requests.

Requests are generated lazily in chunks (memory flat in num_requests) and are
the same numbers a one-shot generation gives: arrivals, prompt lengths and
output lengths each come from their own stretch of one seeded stream (the
generator's state after all arrivals, after all prompts), drawn chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from frontend.config.schema import Dist, SyntheticWorkload
from frontend.workload.request import Request, TokenContent

SHARED_PREFIX_KEY = 1
CHUNK = 8192
# simulated time is int64 nanoseconds; nothing generated may come near the wrap-around (2^63 ns = 292 years)
MAX_TIME_NS = 10**18


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
    elif d.dist == "pareto":
        # Pareto type I with tail index alpha and scale x_m = mean (alpha - 1) / alpha, so E[X] = mean;
        # numpy's pareto draws the Lomax X / x_m - 1
        alpha = float(d.alpha)
        x = float(d.mean) * (alpha - 1) / alpha * (1.0 + rng.pareto(alpha, n))
    else:
        x = rng.choice(np.asarray(d.values, dtype=float), n)
    # clip in float first: rint of a huge draw cast to int64 would wrap around
    return np.clip(np.nan_to_num(np.rint(x), nan=d.min, posinf=d.max, neginf=d.min), d.min, d.max).astype(np.int64)


def _gaps(process: str, rate_per_s: float, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    mean_gap = 1e9 / rate_per_s
    if process == "poisson":
        return rng.exponential(mean_gap, n)
    if process == "gamma":
        shape = 1.0 / (cv * cv)
        return rng.gamma(shape, mean_gap / shape, n)
    if process == "constant":
        return np.full(n, mean_gap)
    return np.zeros(n)  # burst: everything at t=0


def _check_time(t_last: float, what: str) -> None:
    if not np.isfinite(t_last) or t_last > MAX_TIME_NS:
        from frontend.config.loader import ConfigError

        raise ConfigError(f"{what}: the last arrival would be at {t_last:.3g} ns, beyond the simulable "
                          f"{MAX_TIME_NS:.0e} ns (int64 nanoseconds); raise the rate or lower the count")


def arrival_times_ns(process: str, rate_per_s: float, cv: float, n: int, rng: np.random.Generator,
                     what: str = "workload.arrival.rate_per_s") -> np.ndarray:
    t = np.cumsum(_gaps(process, rate_per_s, cv, n, rng))
    t -= t[0]
    _check_time(float(t[-1]) if n else 0.0, what)
    return t.astype(np.int64)


def synthetic_requests(cfg: SyntheticWorkload, seed: int) -> list[Request]:
    return list(iter_synthetic_requests(cfg, seed))


def iter_synthetic_requests(cfg: SyntheticWorkload, seed: int, chunk: int = CHUNK) -> Iterator[Request]:
    """The workload's requests in arrival order, generated `chunk` at a time. Raises ConfigError up front
    (before the first request is yielded) when arrival times would leave int64 nanoseconds."""
    n = cfg.num_requests
    a = cfg.arrival
    rng = np.random.default_rng(seed)
    # pass 1: walk the arrival stretch of the stream to find where prompts start and check the time range
    total = 0.0
    t0 = None
    for lo in range(0, n, chunk):
        g = _gaps(a.process, a.rate_per_s, a.cv, min(chunk, n - lo), rng)
        if t0 is None:
            t0 = float(g[0])
        total = float(np.cumsum(np.concatenate([[total], g]))[-1])
    _check_time(total - (t0 or 0.0), "workload.arrival.rate_per_s")
    prompt_state = rng.bit_generator.state
    for lo in range(0, n, chunk):
        sample_dist(cfg.prompt_tokens, rng, min(chunk, n - lo))
    output_state = rng.bit_generator.state
    return _generate(cfg, seed, prompt_state, output_state, chunk)


def _generate(cfg: SyntheticWorkload, seed: int, prompt_state, output_state, chunk: int) -> Iterator[Request]:
    n = cfg.num_requests
    a = cfg.arrival
    ra = np.random.default_rng(seed)
    rp = np.random.default_rng()
    rp.bit_generator.state = prompt_state
    ro = np.random.default_rng()
    ro.bit_generator.state = output_state
    carry = 0.0
    t0 = 0.0
    shared = cfg.shared_prefix_tokens
    # the model of each request from its own stream (seed, 1), so a mix changes nothing else of the workload
    mix = sorted(cfg.model_mix.items())
    rm = np.random.default_rng([seed, 1]) if mix else None
    names = [k for k, _ in mix]
    weights = np.array([w for _, w in mix], dtype=float)
    if mix:
        weights /= weights.sum()
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        g = _gaps(a.process, a.rate_per_s, a.cv, m, ra)
        if lo == 0:
            t0 = float(g[0])
        t = np.cumsum(np.concatenate([[carry], g]))[1:]
        carry = float(t[-1])
        arrivals = (t - t0).astype(np.int64).tolist()
        prompts = sample_dist(cfg.prompt_tokens, rp, m).tolist()
        outputs = sample_dist(cfg.output_tokens, ro, m).tolist()
        models = [names[k] for k in rm.choice(len(names), size=m, p=weights)] if rm is not None else [None] * m
        for j in range(m):
            i = lo + j
            p = prompts[j]
            content = TokenContent()
            if shared:
                content = TokenContent(segments=[(SHARED_PREFIX_KEY, shared), (1000 + i, p)])
            yield Request(request_id=f"req-{i}", arrival_ns=arrivals[j], input_tokens=p + shared,
                          output_tokens=outputs[j], content=content, seq=i, model=models[j])
