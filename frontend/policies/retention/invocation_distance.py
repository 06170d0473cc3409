"""invocation_distance - KVFlow/ScaleSim: every program's upcoming turns get a steps-to-execution on the
program DAG (0: only a tool call is in the way, 1: a parent runs now, ...), tie-broken by the expected release
time; cached HBM blocks are evicted farthest-first instead of least-recently-used (the ranking is in
common.PolicyContext.priorities; prefetch/invocation_distance.py loads ahead from the same ranking)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from frontend.policies.common import FAR, RetentionPolicyBase
from frontend.policies.registry import register_retention

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime
    from frontend.workload.request import Request


@register_retention("invocation_distance")
class InvocationDistance(RetentionPolicyBase):
    ranks = True

    def on_turn_finish(self, inst: InstanceRuntime, req: Request, cached: list[int], now: int) -> bool:
        ctx = self.ctx
        tools = self.orch.next_tools(req.request_id)
        ctx.last_turn[req.program_id] = (inst.name, now, tools[0] if tools else "")
        ctx.dirty.add(inst.name)
        self._classify(inst, req, now)
        return False

    def on_turn_arrival(self, inst: InstanceRuntime, req: Request) -> None:
        self.ctx.dirty.add(inst.name)

    def _classify(self, inst: InstanceRuntime, req: Request, now: int) -> None:
        """Log whether the finished turn's program ranks among the prefetch_lookahead nearest on its instance
        (kept) or behind them (first to be evicted), against the ranking last computed there."""
        g = self.ctx.expected_gap(req, now)
        key = (0, now + int(g) if g is not None else FAR)
        rank = sum(1 for k, _ in self.ctx.order.get(inst.name, ()) if k < key)
        self.ctx.decide(now, req, "keep" if rank < max(1, self.cfg.prefetch_lookahead) else "offload")

    def after_ranking(self, inst: InstanceRuntime, prio: dict[int, tuple]) -> None:
        """Evict farthest-first: the cached free blocks of upcoming turns go to the tail of the free queue in
        priority order (nearest last), so unclaimed blocks (finished programs, far agents) go first."""
        pool = inst.pool
        cached = pool.cached
        ref = pool.ref
        mine = []
        for h, k in prio.items():
            b = cached.get(h)
            if b is not None and not ref[b]:
                mine.append((k, b))
        if not mine:
            return
        mine.sort()
        blocks = [b for _, b in mine[: pool.num_blocks]]
        pool.touch(blocks)
        pool.release(blocks)  # release puts blocks[0] (the nearest program's first block) at the very tail
