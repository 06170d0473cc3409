"""invocation_distance_lora - ScaleSim: invocation-distance prefetch and eviction of an agent's whole private
state, its KV and its LoRA adapter ("models, prefix caches, and adapters", arXiv 2601.21473 abstract).

The KV part is KVFlow's (prefetch/invocation_distance.py). For adapters: every ranking gives the instance's
adapter slots a next-use order (an adapter in the running batch first, then by the nearest upcoming turn
that names it; adapters no upcoming turn names are the farthest), so a cold load frees the slot of the adapter
needed last instead of the least recently used one; and the adapters of the turns due within PREFETCH_STEPS
are copied into slots in the background over the host link (the GPU keeps running), nearest first, only into
a free slot or one whose adapter is needed later. A turn scheduled before its adapter's copy has landed waits
for the rest of the copy (frontend/instance/lora.py). Without LoRA it is exactly invocation_distance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from frontend.policies.common import PREFETCH_STEPS
from frontend.policies.prefetch.invocation_distance import InvocationDistancePrefetch
from frontend.policies.registry import register_prefetch

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime

RUNNING = (-1,)  # next-use key of an adapter in the running batch: before every upcoming turn


@register_prefetch("invocation_distance_lora")
class InvocationDistanceLoRAPrefetch(InvocationDistancePrefetch):
    def after_ranking(self, inst: InstanceRuntime, now: int, prio: dict[int, tuple],
                      order: list[tuple[tuple, str]]) -> None:
        super().after_ranking(inst, now, prio, order)
        lora = inst.compute if hasattr(inst.compute, "resident") else None
        if lora is None:
            return
        self._adapters_ahead(inst, lora, now, order)

    def _adapters_ahead(self, inst: InstanceRuntime, lora, now: int, order: list[tuple[tuple, str]]) -> None:
        orch = self.orch
        next_use: dict[int, tuple] = {}
        for r in inst.scheduler.running:
            if r.lora is not None and r.lora >= 0:
                next_use[r.lora] = RUNNING
        due: list[tuple[tuple, int]] = []
        for key, tid in order:  # nearest first
            a = orch.programs[orch.turns[tid].spec.program_id].spec.lora
            if a is None or a < 0 or a in next_use:
                continue
            next_use[a] = key
            if key[0] <= PREFETCH_STEPS:
                due.append((key, a))
        lora.next_use = next_use
        lora.set_now(now)
        budget = max(1, self.cfg.prefetch_lookahead)
        for key, a in due[:budget]:
            lora.prefetch(a, key)
