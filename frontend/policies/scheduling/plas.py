"""plas - Autellix PLAS: least attained service first (tokens of the program's completed calls); victim = most
attained, and (with swap preemption) running calls of programs with more attained service are preempted for
the waiting call with the least."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from frontend.policies.common import PolicyContext, SchedulingPolicy
from frontend.policies.registry import register_scheduling

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime
    from frontend.workload.request import Request


@register_scheduling("plas")
class Plas(SchedulingPolicy):
    def key(self) -> Callable[[Request], tuple] | None:
        orch = self.orch
        return lambda r: (orch.programs[r.program_id].service_tokens if r.program_id else 0, r.seq)

    def before_step(self, ctx: PolicyContext, inst: InstanceRuntime) -> None:
        """PLAS preempts: "scheduling algorithms ... that preempt and prioritize LLM calls based on their
        programs' previously completed calls" (Autellix abstract). When the waiting call with the least
        attained service cannot be admitted (no KV room or no seat), running calls of programs with more
        attained service are preempted, most first, until it can. Only where the instance preempts by
        swapping (kv.preemption: swap with a host tier): Autellix swaps preempted calls' KV to host memory
        ("memory-swap optimizations"); a vLLM recompute preemption would redo their whole prefill."""
        sched = inst.scheduler
        key = sched.priority
        if key is None or not sched.swap or not sched.waiting or not sched.running:
            return  # Autellix preempts by swapping to host memory; a recompute preemption is not its policy
        head = min(sched.waiting, key=key)
        if head.swapped_blocks or head.num_computed_tokens:
            return
        pool = inst.pool
        hk = key(head)
        preempted = 0
        while sched.running:
            hits = pool.find_cached_prefix(head)
            in_hbm = len(hits) * pool.block_size
            seats = len(sched.running) < sched.engine.max_num_seqs - len(sched.releasing)
            if seats and pool.can_allocate(head, head.num_tokens - in_hbm, hits, in_hbm):
                break
            victim = max(sched.running, key=key)
            if key(victim) <= hk:
                break
            sync = getattr(sched, "sync", None)
            if sync is not None and not preempted:
                sync()  # a decode run-ahead must write its counters back before a request leaves the batch
            sched.running.remove(victim)
            sched._preempt(victim)
            preempted += 1
        if preempted:
            ctx.decide(0, head, "preempt")
            ctx.stats.decisions["preempted"] = ctx.stats.decisions.get("preempted", 0) + preempted - 1
