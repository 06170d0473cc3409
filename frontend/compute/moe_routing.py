"""Expert routing (gating) of one MoE layer for one iteration, per expert-parallel rank.

Why: with expert parallelism a MoE layer costs what its slowest EP rank costs, and that rank's
time depends on how many token-expert assignments it receives and how many of its local experts
are activated (each activated expert's weights are streamed once). A router model turns "t tokens,
top-k of E experts, EP ranks, placement" into those per-rank numbers; the compute model then costs
the straggler.

Placement (vLLM `--expert-placement-strategy`, vllm/model_executor/layers/fused_moe/layer.py,
determine_expert_map): `linear` gives rank r the contiguous experts [r E/EP, (r+1) E/EP);
`round_robin` gives expert e to rank e mod EP. Balanced routing is indifferent to placement;
skewed routing is not (hot experts 0, 1, 2, ... share a rank under linear, spread under round_robin).

Routers are registered by name (`register_router`, `make_router`); every router returns a
`RoutingResult`. Random routers take a caller-owned `numpy.random.Generator`, so a run's seed fixes
the routing and nothing touches global random state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Placement = Literal["linear", "round_robin"]


@dataclass(frozen=True)
class ExpertPlacement:
    """Which EP rank holds each routed expert (EP divides E: the config loader checks it)."""

    num_experts: int
    ep: int
    strategy: Placement = "linear"

    def __post_init__(self) -> None:
        if self.num_experts < 1 or self.ep < 1 or self.num_experts % self.ep:
            raise ValueError(f"ep={self.ep} must divide num_experts={self.num_experts} (both >= 1)")
        if self.strategy not in ("linear", "round_robin"):
            raise ValueError(f"unknown expert placement {self.strategy!r}")

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.ep

    def rank_of_expert(self) -> np.ndarray:
        """Array of length E: the EP rank holding expert e."""
        e = np.arange(self.num_experts)
        return e // self.experts_per_rank if self.strategy == "linear" else e % self.ep

    def experts_of_rank(self, rank: int) -> list[int]:
        return [int(x) for x in np.flatnonzero(self.rank_of_expert() == rank)]


@dataclass(frozen=True)
class RoutingResult:
    """Per-EP-rank load of one MoE layer in one iteration (expected values or one sample).

    assignments_per_rank: token-expert assignments each rank computes (they sum to t x k);
    tokens_per_rank: distinct tokens dispatched to each rank (what an all-to-all sends it);
    experts_per_rank: distinct local experts activated (whose weights the rank streams).
    """

    num_tokens: int
    top_k: int
    assignments_per_rank: tuple[float, ...]
    tokens_per_rank: tuple[float, ...]
    experts_per_rank: tuple[float, ...]

    @property
    def imbalance(self) -> float:
        """max / mean of the assignments per rank (1.0 = perfectly balanced; 1.0 for an empty batch)."""
        mean = sum(self.assignments_per_rank) / len(self.assignments_per_rank)
        return max(self.assignments_per_rank) / mean if mean > 0 else 1.0

    @property
    def straggler_rank(self) -> int:
        """The rank with the most assignments, ties broken by more activated experts, then lowest rank."""
        n = len(self.assignments_per_rank)
        return max(range(n), key=lambda r: (self.assignments_per_rank[r], self.experts_per_rank[r], -r))


class ExpertRouter(Protocol):
    """Routes `num_tokens` tokens, top-k each, over the placement's EP ranks."""

    name: str

    def route(self, num_tokens: int, top_k: int, placement: ExpertPlacement,
              rng: np.random.Generator | None = None) -> RoutingResult: ...


_ROUTERS: dict[str, Callable[..., ExpertRouter]] = {}


def register_router(name: str) -> Callable[[Callable[..., ExpertRouter]], Callable[..., ExpertRouter]]:
    """Class decorator: make a router constructible by name (`make_router(name, **params)`)."""

    def deco(cls: Callable[..., ExpertRouter]) -> Callable[..., ExpertRouter]:
        if name in _ROUTERS:
            raise ValueError(f"expert router {name!r} is already registered")
        _ROUTERS[name] = cls
        return cls

    return deco


def make_router(name: str, **params: float) -> ExpertRouter:
    if name not in _ROUTERS:
        raise ValueError(f"unknown expert router {name!r} (have {', '.join(sorted(_ROUTERS))})")
    return _ROUTERS[name](**params)


def router_names() -> list[str]:
    return sorted(_ROUTERS)


def _check(num_tokens: int, top_k: int, placement: ExpertPlacement) -> None:
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    if not 1 <= top_k <= placement.num_experts:
        raise ValueError(f"top_k={top_k} must be in [1, {placement.num_experts}]")


@register_router("balanced")
@dataclass(frozen=True)
class BalancedRouter:
    """Expected load under uniform routing, in closed form (no sampling).

    Each token picks k distinct experts uniformly at random of E, so a given expert is among one
    token's choices with probability k/E and missed with 1 - k/E. Tokens route independently, so an
    expert is missed by all t tokens with probability (1 - k/E)^t, and by linearity of expectation
    the expected number of distinct experts activated is E * (1 - (1 - k/E)^t). A rank holds E/EP
    experts, so it expects (E/EP) * (1 - (1 - k/E)^t) activated experts and t*k/EP assignments.
    A token reaches a rank unless all k of its choices miss the rank's n = E/EP experts:
    P(miss) = C(E-n, k) / C(E, k), so the rank expects t * (1 - C(E-n, k) / C(E, k)) tokens.
    Placement changes which experts a rank holds, not how many, so every rank gets the same load.
    """

    name: str = "balanced"

    def route(self, num_tokens: int, top_k: int, placement: ExpertPlacement,
              rng: np.random.Generator | None = None) -> RoutingResult:
        _check(num_tokens, top_k, placement)
        e, n, ep = placement.num_experts, placement.experts_per_rank, placement.ep
        t, k = num_tokens, top_k
        experts = n * (1.0 - (1.0 - k / e) ** t)
        p_miss = 1.0
        for i in range(k):  # C(E-n, k) / C(E, k) as a product, exact for k > E - n (a factor becomes 0)
            p_miss *= max(e - n - i, 0) / (e - i)
        tokens = t * (1.0 - p_miss)
        return RoutingResult(t, k, (t * k / ep,) * ep, (tokens,) * ep, (experts,) * ep)


def _sample(num_tokens: int, top_k: int, placement: ExpertPlacement, log_weights: np.ndarray | None,
            rng: np.random.Generator) -> RoutingResult:
    """One sampled routing: each token draws k distinct experts, then loads are counted per rank.

    Distinct draws by the Gumbel top-k trick: the k largest of log w_e + Gumbel noise are a sample
    of k items without replacement, each next item drawn with probability proportional to its
    weight among those left (Vieira 2014, "Gumbel-max trick and weighted reservoir sampling";
    Kool et al. 2019, arXiv 1903.06059). Uniform weights give uniform k-subsets.
    """
    e, ep = placement.num_experts, placement.ep
    t, k = num_tokens, top_k
    if t == 0:
        zero = (0.0,) * ep
        return RoutingResult(0, k, zero, zero, zero)
    keys = rng.gumbel(size=(t, e))
    if log_weights is not None:
        keys += log_weights
    chosen = np.argpartition(-keys, k - 1, axis=1)[:, :k]  # (t, k) expert ids, distinct per row
    rank_of = placement.rank_of_expert()
    per_expert = np.bincount(chosen.ravel(), minlength=e)
    assignments = np.bincount(rank_of, weights=per_expert, minlength=ep)
    experts = np.bincount(rank_of, weights=(per_expert > 0).astype(float), minlength=ep)
    ranks = rank_of[chosen]  # (t, k) rank of each choice
    hit = np.zeros((t, ep), dtype=bool)
    hit[np.arange(t)[:, None], ranks] = True
    tokens = hit.sum(axis=0)
    return RoutingResult(t, k, tuple(float(x) for x in assignments), tuple(float(x) for x in tokens),
                         tuple(float(x) for x in experts))


@register_router("random")
@dataclass(frozen=True)
class RandomRouter:
    """One sample of uniform routing (k distinct experts per token): the balanced router's noise."""

    name: str = "random"

    def route(self, num_tokens: int, top_k: int, placement: ExpertPlacement,
              rng: np.random.Generator | None = None) -> RoutingResult:
        _check(num_tokens, top_k, placement)
        if rng is None:
            raise ValueError("the random router needs a numpy Generator (the run's seeded stream)")
        return _sample(num_tokens, top_k, placement, None, rng)


@register_router("skewed")
@dataclass(frozen=True)
class SkewedRouter:
    """One sample of Zipf-skewed routing: expert e (0-based) has weight 1 / (e + 1)^s.

    Measured routers are far from uniform (a few hot experts per layer); a Zipf law over expert
    popularity is the usual one-parameter model of that (s = 0 is uniform routing). Experts are
    ranked hottest-first by id, so placement decides whether the hot ones share a rank.
    """

    zipf_s: float = 1.0
    name: str = "skewed"

    def __post_init__(self) -> None:
        if not 0.0 <= self.zipf_s <= 10.0:
            raise ValueError(f"zipf_s must be in [0, 10], got {self.zipf_s}")

    def route(self, num_tokens: int, top_k: int, placement: ExpertPlacement,
              rng: np.random.Generator | None = None) -> RoutingResult:
        _check(num_tokens, top_k, placement)
        if rng is None:
            raise ValueError("the skewed router needs a numpy Generator (the run's seeded stream)")
        log_w = -self.zipf_s * np.log(np.arange(1, placement.num_experts + 1, dtype=float))
        return _sample(num_tokens, top_k, placement, log_w, rng)


@register_router("round_robin")
@dataclass(frozen=True)
class RoundRobinRouter:
    """Deterministic routing that spreads assignments evenly: token i takes experts i*k .. i*k+k-1 (mod E).

    The t*k assignments walk the experts cyclically, so every expert gets floor or ceil of t*k/E of them
    and min(E, t*k) experts are activated: the best case a load-balancing loss aims at, with no sampling.
    """

    name: str = "round_robin"

    def route(self, num_tokens: int, top_k: int, placement: ExpertPlacement,
              rng: np.random.Generator | None = None) -> RoutingResult:
        _check(num_tokens, top_k, placement)
        e, ep = placement.num_experts, placement.ep
        t, k = num_tokens, top_k
        total = t * k
        per_expert = np.full(e, total // e, dtype=np.int64)
        per_expert[: total % e] += 1
        rank_of = placement.rank_of_expert()
        assignments = np.bincount(rank_of, weights=per_expert, minlength=ep)
        experts = np.bincount(rank_of, weights=(per_expert > 0).astype(float), minlength=ep)
        if t == 0:
            tokens = np.zeros(ep)
        else:  # token i's experts are the window [i*k, i*k+k) mod E: count the tokens whose window meets each rank
            hit = np.zeros((t, ep), dtype=bool)
            choice = (np.arange(t)[:, None] * k + np.arange(k)[None, :]) % e
            hit[np.arange(t)[:, None], rank_of[choice]] = True
            tokens = hit.sum(axis=0)
        return RoutingResult(t, k, tuple(float(x) for x in assignments), tuple(float(x) for x in tokens),
                             tuple(float(x) for x in experts))


class ExpertTrace:
    """Per-request expert histograms from a trace: how often each request's tokens chose each expert.

    A JSONL file, one object per request: {"request_id": ..., "experts": [count per expert]} (length E) or
    {"request_id": ..., "experts": {"<expert id>": count, ...}} (sparse). Counts are token-expert
    assignments summed over the request's tokens (and layers, if the trace pools them); only their
    proportions are used: p_r(e) = count_e / sum of counts. A request the trace does not name routes
    uniformly (p = 1/E).
    """

    def __init__(self, path, num_experts: int) -> None:
        from frontend.workload.jsonl import json_objects

        self.num_experts = num_experts
        self.uniform = np.full(num_experts, 1.0 / num_experts)
        self.by_request: dict[str, np.ndarray] = {}
        for where, obj in json_objects(path, "moe.expert_trace"):
            if not isinstance(obj, dict) or "request_id" not in obj or "experts" not in obj:
                raise ValueError(f"{where}: expected an object with 'request_id' and 'experts'")
            h = np.zeros(num_experts)
            ex = obj["experts"]
            items = enumerate(ex) if isinstance(ex, list) else (ex.items() if isinstance(ex, dict) else None)
            if items is None or (isinstance(ex, list) and len(ex) != num_experts):
                raise ValueError(f"{where}: field 'experts' must be a list of {num_experts} counts or a dict "
                                 "expert id -> count")
            for k, v in items:
                try:
                    e = int(k)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: field 'experts': expert id {k!r} is not an integer") from None
                if not 0 <= e < num_experts:
                    raise ValueError(f"{where}: field 'experts': expert {e} outside 0..{num_experts - 1}")
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                    raise ValueError(f"{where}: field 'experts': count of expert {e} must be a finite number >= 0")
                h[e] += v
            total = h.sum()
            if total <= 0:
                raise ValueError(f"{where}: field 'experts': all counts are zero")
            self.by_request[str(obj["request_id"])] = h / total

    def route_batch(self, batch: list[tuple[str, int]], top_k: int, placement: ExpertPlacement,
                    tokens_routed: int) -> RoutingResult:
        """Expected per-rank load of one MoE layer for a batch of (request id, tokens this step).

        Expected assignments to expert e: w_e = k x sum_r t_r p_r(e) (tokens beyond the batch's own, i.e.
        padding, route uniformly). An expert is activated unless none of its assignments happen; with
        assignments as independent rare events that is 1 - exp(-w_e) (Poisson). A token of request r reaches
        rank q unless all k of its choices miss q's experts: 1 - (1 - P_r(q))^k, P_r(q) = sum of p_r over q's
        experts (choices treated as independent draws, a close bound for k << E).
        """
        e, ep = placement.num_experts, placement.ep
        rank_of = placement.rank_of_expert()
        w = np.zeros(e)
        tok_rank = np.zeros(ep)
        real = 0
        for rid, t in batch:
            p = self.by_request.get(rid, self.uniform)
            w += t * p
            pr = np.bincount(rank_of, weights=p, minlength=ep)
            tok_rank += t * (1.0 - (1.0 - pr) ** top_k)
            real += t
        pad = max(0, tokens_routed - real)
        if pad:
            w += pad * self.uniform
            pr = np.bincount(rank_of, weights=self.uniform, minlength=ep)
            tok_rank += pad * (1.0 - (1.0 - pr) ** top_k)
        w *= top_k
        assignments = np.bincount(rank_of, weights=w, minlength=ep)
        experts = np.bincount(rank_of, weights=1.0 - np.exp(-w), minlength=ep)
        return RoutingResult(real + pad, top_k, tuple(float(x) for x in assignments),
                             tuple(float(x) for x in tok_rank), tuple(float(x) for x in experts))
