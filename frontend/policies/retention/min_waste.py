"""min_waste - InferCept: choose the cheapest of discard (recompute), preserve (hold HBM through the call)
and swap (copy to the host tier, pipelined) by the memory-time each wastes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from frontend.policies.common import FAR, RetentionPolicyBase
from frontend.policies.registry import register_retention

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime
    from frontend.workload.request import Request


@register_retention("min_waste")
class MinWaste(RetentionPolicyBase):
    def on_turn_finish(self, inst: InstanceRuntime, req: Request, cached: list[int], now: int) -> bool:
        return self._min_waste(inst, req, cached, self.ctx.expected_gap(req, now), now)

    def _min_waste(self, inst: InstanceRuntime, req: Request, cached: list[int], gap: float | None, now: int) -> bool:
        """InferCept's comparison of GPU memory-time wasted by each choice (block-ns).

        preserve: the context's blocks sit idle for the whole interception: C_i x T_INT, with T_INT the
                  running mean of this tool's finished calls (a preserved request resumes at once).
        discard : recomputing the context later holds the memory of everything running for the
                  recompute time: (C_i + C_other) x T_fwd(C_i).
        swap    : pipelined with compute, so the batch does not stall; the context's own blocks stay
                  occupied while they are copied out and back in: C_i x 2 x T_swap(C_i).
        """
        ctx = self.ctx
        n = len(cached)
        if n == 0:
            ctx.decide(now, req, "discard")
            return False
        t_int = gap if gap is not None else float(FAR)
        tm = inst.tier_manager
        copied = tm is not None and tm.active and all(tm.tiers[0].contains(tm.key(inst.pool.block_hash[b]))
                                                       for b in cached)
        t_restore = ctx.restore_ns(inst, req, cached)
        w_preserve = n * t_int
        w_discard = max(1, inst.pool.num_used) * t_restore
        swap_tier = tm.swap_tier() if tm is not None else None
        w_swap = float("inf")
        if swap_tier is not None and not copied:
            nbytes = n * tm.block_bytes
            w_swap = n * 2 * (swap_tier.cfg.latency_ns + nbytes / swap_tier.cfg.bw_gbps)
        choice = min((w_preserve, "preserve"), (w_discard, "discard"), (w_swap, "swap"))[1]
        ctx.decide(now, req, choice)
        if choice == "preserve":
            # held until the next turn comes back and is admitted (memory pressure may still break it)
            ctx.pin(inst, req, cached, None)
            return True
        if choice == "swap":
            for b in cached:
                tm._copy_down(inst.pool.block_hash[b], b)
        return False
