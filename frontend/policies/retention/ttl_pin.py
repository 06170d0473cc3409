"""ttl_pin - Continuum: pin the program's KV in HBM for a time-to-live across its tool call.

The TTL is fixed (`ttl_policy: fixed`, the released preview: pin for ttl_ms when the tool's running mean is
within it) or chosen per call by the paper's utility (`ttl_policy: utility`): P(tool done by TTL) x benefit -
memory cost. Pins expire, break under memory pressure, and hold once the next turn has arrived until it is
admitted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from frontend.policies.common import PolicyContext, RetentionPolicyBase
from frontend.policies.registry import register_retention

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime
    from frontend.workload.request import Request


@register_retention("ttl_pin")
class TtlPin(RetentionPolicyBase):
    def __init__(self, ctx: PolicyContext, mode: str | None = None) -> None:
        super().__init__(ctx)
        self.mode = mode or ctx.cfg.ttl_policy  # "fixed" | "utility"
        if self.mode not in ("fixed", "utility"):
            raise ValueError(f"ttl_pin: unknown TTL mode {self.mode!r}; modes: fixed, utility")

    def ttl_ns(self, inst: InstanceRuntime, req: Request, cached: list[int], now: int) -> int:
        if self.mode == "utility":
            return self._utility_ttl(inst, req, cached, now)
        gap = self.ctx.expected_gap(req, now)
        return int(self.cfg.ttl_ms * 1e6) if gap is not None and gap <= self.cfg.ttl_ms * 1e6 else 0

    def on_turn_finish(self, inst: InstanceRuntime, req: Request, cached: list[int], now: int) -> bool:
        ttl = self.ttl_ns(inst, req, cached, now)
        if ttl > 0 and cached:
            self.ctx.decide(now, req, "pin")
            self.ctx.pin(inst, req, cached, now + ttl)
            return True
        self.ctx.decide(now, req, "release")
        return False

    def _utility_ttl(self, inst: InstanceRuntime, req: Request, cached: list[int], now: int) -> int:
        """Continuum's TTL: the tau maximising U(tau) = P(T <= tau) * B - C * E[min(T, tau)], 0 if none is > 0.

        T: the tool call's duration, from the empirical CDF of finished calls of that tool.
        B: what a pin saves the program if the call returns in time: restoring the context (reload or
           prefill) plus the admission wait a released turn meets again (the instance's observed delay).
        C: what the pin costs the others per ns held: its share of the KV pool times the requests
           waiting on the instance (each is held back by that share of memory while it is pinned).
        """
        ctx = self.ctx
        tools = self.orch.next_tools(req.request_id)
        samples = sorted(s for t in tools for s in ctx.tool_samples(t, now))
        if not samples or not cached:
            return 0
        benefit = ctx.restore_ns(inst, req, cached) + inst.queue_delay_ns
        sched = inst.scheduler
        waiting = len(sched.waiting) + len(sched.incoming)
        cost_rate = len(cached) / inst.pool.num_blocks * waiting
        n = len(samples)
        best_u, best_tau = 0.0, 0
        below = 0.0  # sum of samples <= tau
        for i, tau in enumerate(samples):
            below += tau
            p = (i + 1) / n
            expected_hold = (below + (n - i - 1) * tau) / n
            u = p * benefit - cost_rate * expected_hold
            if u > best_u:
                best_u, best_tau = u, int(math.ceil(tau))
        if best_tau:
            ctx.stats.ttl_ns.append(best_tau)
        return best_tau
