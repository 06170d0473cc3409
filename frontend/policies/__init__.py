"""Serving policies for agent programs: a small protocol per kind, one registered class per policy.

Scheduling (the waiting order and the preemption victim), scheduling/<name>.py:
  fcfs, program_fcfs (Continuum), plas (Autellix).
Retention (when a turn ends and its program goes into a tool call), retention/<name>.py:
  lru (vLLM), ttl_pin (Continuum; fixed or utility TTL), min_waste (InferCept),
  invocation_distance (KVFlow/ScaleSim), saga (SAGA's tool-aware TTL).
Prefetch (KV loaded back ahead of need), prefetch/<name>.py:
  none, invocation_distance (KVFlow).

registry.py holds the registries and the protocols, common.py the shared machinery (pins, timers, stats,
tool-gap estimates, invocation-distance priorities). Every module under scheduling/, retention/ and prefetch/
is imported here, so a new policy is a new file with a `register_*` decorator. `RetentionPolicy` is the
engine's facade: it composes the three policies the run file names and keeps the hooks the engine calls.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from frontend.config.schema import PolicyConfig
from frontend.policies.common import (
    COLD_START_QUANTILES,
    EVICT_PRIORITY_STEPS,
    FAR,
    PREFETCH_STEPS,
    Pin,
    PolicyContext,
    PolicyStats,
    PrefetchPolicy,
    RetentionPolicyBase,
    SchedulingPolicy,
)
from frontend.policies.registry import (
    get_prefetch,
    get_retention,
    get_scheduling,
    lookup,
    names,
    register_prefetch,
    register_retention,
    register_scheduling,
    unregister,
)

if TYPE_CHECKING:
    from frontend.agents.orchestrator import Orchestrator
    from frontend.instance.runtime import InstanceRuntime
    from frontend.workload.request import Request

__all__ = [
    "COLD_START_QUANTILES", "EVICT_PRIORITY_STEPS", "FAR", "PREFETCH_STEPS", "Pin", "PolicyContext", "PolicyStats",
    "PrefetchPolicy", "RetentionPolicy", "RetentionPolicyBase", "SchedulingPolicy", "get_prefetch", "get_retention",
    "get_scheduling", "lookup", "names", "priority_key", "register_prefetch", "register_retention",
    "register_scheduling", "unregister",
]


def _import_all() -> None:
    for sub in ("scheduling", "retention", "prefetch"):
        pkg = importlib.import_module(f"{__name__}.{sub}")
        for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
            importlib.import_module(f"{pkg.__name__}.{mod}")


_import_all()


def priority_key(cfg: PolicyConfig, orch: Orchestrator | None) -> Callable[[Request], tuple] | None:
    """The waiting-order key of the run's scheduling policy (None: arrival order)."""
    if orch is None:
        return None
    return get_scheduling(cfg.scheduling)(cfg, orch).key()


class RetentionPolicy:
    """The engine's hooks over the run's scheduling, retention and prefetch policies (see registry.py)."""

    def __init__(self, cfg: PolicyConfig, orch: Orchestrator, schedule_timer: Callable[[int, Callable[[], None]], None]
                 ) -> None:
        self.cfg = cfg
        self.orch = orch
        orch.retention = self  # type: ignore[attr-defined]  # the scheduling key asks which programs hold pins
        self.ctx = PolicyContext(cfg, orch, schedule_timer)
        self.scheduling_policy = get_scheduling(cfg.scheduling)(cfg, orch)
        self.retention_policy = get_retention(cfg.retention)(self.ctx)
        self.prefetch_policy = get_prefetch(cfg.prefetch)(self.ctx)
        self._ranks = self.retention_policy.ranks or self.prefetch_policy.ranks

    # ---- the shared state, under the names tests and reports use ----
    @property
    def stats(self) -> PolicyStats:
        return self.ctx.stats

    @property
    def pins(self) -> dict[str, Pin]:
        return self.ctx.pins

    @property
    def last_turn(self) -> dict[str, tuple[str, int, str]]:
        return self.ctx.last_turn

    @property
    def prio(self) -> dict[str, dict[int, tuple]]:
        return self.ctx.prio

    @property
    def _dirty(self) -> set[str]:
        return self.ctx.dirty

    @property
    def _now(self) -> dict[str, int]:
        return self.ctx.now

    @property
    def _order(self) -> dict[str, list[tuple[tuple, str]]]:
        return self.ctx.order

    @property
    def _inflight(self) -> dict[str, dict[int, tuple[int, int]]]:
        return self.ctx.inflight

    def _tool_samples(self, tool: str, now: int) -> list[float]:
        return self.ctx.tool_samples(tool, now)

    def __getattr__(self, name: str):
        # a policy's own helpers (e.g. ttl_pin's _utility_ttl) through the facade
        for part in ("retention_policy", "scheduling_policy", "prefetch_policy"):
            obj = self.__dict__.get(part)
            if obj is not None and hasattr(obj, name):
                return getattr(obj, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- hooks ----
    def break_one_pin(self, inst: InstanceRuntime, for_program: str | None = None) -> bool:
        """Memory pressure: release one pin (latest deadline first, the requester's own program last)."""
        return self.ctx.break_one_pin(inst, for_program)

    def on_turn_finish(self, inst: InstanceRuntime, req: Request, blocks: list[int], now: int) -> bool:
        """Called before req's blocks are freed; True when the policy kept them (pinned)."""
        if not req.program_id or not self.orch.children.get(req.request_id):
            return False
        cached = [b for b in blocks if inst.pool.block_hash[b] is not None]
        return self.retention_policy.on_turn_finish(inst, req, cached, now)

    def on_turn_arrival(self, inst: InstanceRuntime, req: Request) -> None:
        pin = self.ctx.pins.get(req.program_id or "")
        if pin is not None:
            if pin.inst is not inst:
                self.ctx.release(pin)  # routed elsewhere: the pin cannot help
            else:
                pin.arrived = True
        self.retention_policy.on_turn_arrival(inst, req)

    def on_admit(self, req: Request) -> None:
        """The next turn was scheduled and has taken its prefix blocks: the pin has done its job; the prefetch
        policy then charges what of the prefix is still on the tier link."""
        pin = self.ctx.pins.get(req.program_id or "")
        if pin is not None:
            self.ctx.stats.pins_used += 1
            self.ctx.release(pin)
        self.prefetch_policy.on_admit(req)

    def prefetch(self, inst: InstanceRuntime, now: int) -> None:
        """Before an instance's step: the scheduling policy's preemption, then (for policies that rank by
        invocation distance, on instances whose ranking changed) the retention policy's eviction order and
        the prefetch policy's loads."""
        ctx = self.ctx
        ctx.now[inst.name] = now
        self.scheduling_policy.before_step(ctx, inst)
        # distances change only when a turn finishes or arrives (expected release times are absolute), so the
        # ranking is redone on those events only
        if not self._ranks or inst.name not in ctx.dirty:
            return
        ctx.dirty.discard(inst.name)
        prio, order = ctx.priorities(inst, now)
        ctx.prio[inst.name] = prio
        ctx.order[inst.name] = order
        self.retention_policy.after_ranking(inst, prio)
        self.prefetch_policy.after_ranking(inst, now, prio, order)
