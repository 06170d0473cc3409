"""Choose the instance a request goes to: routing policies registered by name.

Each policy is a small class with `choose(req, now_ns)`; `Router` picks one by the run file's
`router.policy` (default: `dp_balance` when every instance is a member of a DP group, as vLLM's API server
balances over its DP engines, else `round_robin`).
"""

from __future__ import annotations

from collections.abc import Callable

from frontend.config.schema import RouterConfig
from frontend.instance.runtime import InstanceRuntime
from frontend.workload.request import Request

_POLICIES: dict[str, Callable[..., object]] = {}


def register_policy(name: str):
    def deco(cls):
        if name in _POLICIES:
            raise ValueError(f"routing policy {name!r} is already registered")
        _POLICIES[name] = cls
        return cls

    return deco


def _least_loaded(insts: list[InstanceRuntime]) -> InstanceRuntime:
    return min(insts, key=lambda i: (i.scheduler.load(), i.name))


@register_policy("round_robin")
class RoundRobin:
    def __init__(self, cfg: RouterConfig, insts: list[InstanceRuntime]) -> None:
        self.insts = insts
        self._rr = 0

    def choose(self, req: Request, now_ns: int) -> InstanceRuntime:
        inst = self.insts[self._rr % len(self.insts)]
        self._rr += 1
        return inst


@register_policy("least_loaded")
class LeastLoaded:
    def __init__(self, cfg: RouterConfig, insts: list[InstanceRuntime]) -> None:
        self.insts = insts

    def choose(self, req: Request, now_ns: int) -> InstanceRuntime:
        return _least_loaded(self.insts)


@register_policy("session_affinity")
class SessionAffinity:
    """A program's turns go where its first went, unless that instance is under pressure and busier
    than the least loaded one by more than 8 requests."""

    def __init__(self, cfg: RouterConfig, insts: list[InstanceRuntime]) -> None:
        self.cfg = cfg
        self.insts = insts
        self.affinity: dict[str, str] = {}
        self.hits = 0
        self.breaks = 0

    def choose(self, req: Request, now_ns: int) -> InstanceRuntime:
        insts = self.insts
        key = req.program_id or req.request_id
        prev = self.affinity.get(key)
        if prev is not None:
            inst = next(i for i in insts if i.name == prev)
            if inst.pool.usage() < self.cfg.pressure_threshold or inst.scheduler.load() <= min(
                    i.scheduler.load() for i in insts) + 8:
                self.hits += 1
                return inst
            self.breaks += 1
        inst = _least_loaded(insts)
        self.affinity[key] = inst.name
        return inst


@register_policy("kv_overlap")
class KVOverlap:
    """Most cached prefix blocks, weighed against load."""

    def __init__(self, cfg: RouterConfig, insts: list[InstanceRuntime]) -> None:
        self.cfg = cfg
        self.insts = insts

    def choose(self, req: Request, now_ns: int) -> InstanceRuntime:
        best = None
        best_score = None
        for inst in self.insts:
            hits = len(inst.pool.find_cached_prefix(req))
            blocks = max(1, req.input_tokens // inst.pool.block_size)
            score = hits / blocks - self.cfg.load_weight * inst.scheduler.load() / max(
                1, inst.inst.engine.max_num_seqs)
            if best_score is None or score > best_score:
                best, best_score = inst, score
        assert best is not None
        return best


@register_policy("dp_balance")
class DPBalance:
    """vLLM's load balancing over DP engines (v1 `DPLBAsyncMPClient.get_core_engine_for_request`).

    Each engine scores 4 x waiting + running from the counts the DP coordinator last published (every
    `stats_interval_ms`, 100 ms in vLLM); the lowest score wins (ties: the lowest engine index), and the
    balancer counts the request as waiting there at once, so a burst between two publications spreads
    over the engines instead of piling onto one.
    """

    def __init__(self, cfg: RouterConfig, insts: list[InstanceRuntime]) -> None:
        self.insts = insts
        self.interval_ns = int(cfg.stats_interval_ms * 1e6)
        self.next_publish = 0
        self.counts = [[0, 0] for _ in insts]

    def choose(self, req: Request, now_ns: int) -> InstanceRuntime:
        if now_ns >= self.next_publish:
            for c, inst in zip(self.counts, self.insts, strict=True):
                s = inst.scheduler
                c[0] = len(s.waiting) + len(s.incoming)
                c[1] = len(s.running)
            self.next_publish = (now_ns // self.interval_ns + 1) * self.interval_ns
        best = min(range(len(self.insts)), key=lambda i: (4 * self.counts[i][0] + self.counts[i][1], i))
        self.counts[best][0] += 1
        return self.insts[best]


@register_policy("lora_affinity")
class LoRAAffinity:
    """Multi-LoRA serving: a request goes to the least loaded instance that already holds its adapter in HBM
    (no cold load, frontend/instance/lora.py), else to the least loaded one (S-LoRA / Punica's adapter-aware
    placement, arXiv 2311.03285 sec. 6). Requests without an adapter go to the least loaded instance."""

    def __init__(self, cfg: RouterConfig, insts: list[InstanceRuntime]) -> None:
        self.insts = insts

    def choose(self, req: Request, now_ns: int) -> InstanceRuntime:
        a = req.lora
        if a is not None and a >= 0:
            warm = [i for i in self.insts if a in getattr(i.compute, "resident", ())]
            if warm:
                return _least_loaded(warm)
        return _least_loaded(self.insts)


def policy_names() -> list[str]:
    return sorted(_POLICIES)


def model_key(name: str) -> str:
    """A model name as requests and instances are matched: the last path part, case-insensitive
    ("meta-llama/Llama-3.1-8B" and "llama-3.1-8b" are one model)."""
    return name.rsplit("/", 1)[-1].lower()


class Router:
    """The configured policy over the instances that take new requests; a request naming a model is routed
    among the instances serving that model only (one policy object per model), and one for a model nobody
    serves gets no instance (`choose` returns None, the engine rejects it with `unserved_reason`)."""

    def __init__(self, cfg: RouterConfig, instances: list[InstanceRuntime]) -> None:
        self.cfg = cfg
        self.instances = instances
        name = cfg.policy
        if name is None:
            dp = bool(instances) and all(i.inst.dp_group is not None for i in instances)
            name = "dp_balance" if dp else "round_robin"
        self.policy_name = name
        self.policy = _POLICIES[name](cfg, instances)
        by_model: dict[str, list[InstanceRuntime]] = {}
        for i in instances:
            by_model.setdefault(model_key(i.inst.model.name), []).append(i)
        self._by_model = by_model
        self._model_policies: dict[str, object] = {}

    @property
    def affinity_hits(self) -> int:
        return getattr(self.policy, "hits", 0)

    @property
    def affinity_breaks(self) -> int:
        return getattr(self.policy, "breaks", 0)

    @property
    def affinity(self) -> dict[str, str]:
        return getattr(self.policy, "affinity", {})

    def choose(self, req: Request, now_ns: int = 0) -> InstanceRuntime | None:
        if req.model is not None:
            key = model_key(req.model)
            insts = self._by_model.get(key)
            if not insts:
                return None
            if len(insts) != len(self.instances):
                pol = self._model_policies.get(key)
                if pol is None:
                    pol = self._model_policies[key] = _POLICIES[self.policy_name](self.cfg, insts)
                return insts[0] if len(insts) == 1 else pol.choose(req, now_ns)  # type: ignore[attr-defined]
        if len(self.instances) == 1:
            return self.instances[0]
        return self.policy.choose(req, now_ns)

    def unserved_reason(self, req: Request) -> str:
        return (f"no instance serves model {req.model!r} (instances serve "
                f"{sorted({i.inst.model.name for i in self.instances})})")
