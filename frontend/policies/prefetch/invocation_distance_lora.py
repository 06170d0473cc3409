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

from frontend.policies.common import FAR, PREFETCH_STEPS
from frontend.policies.prefetch.invocation_distance import InvocationDistancePrefetch
from frontend.policies.registry import register_prefetch

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime

RUNNING = (-1,)  # next-use key of an adapter of a running or waiting request: before every upcoming turn


@register_prefetch("invocation_distance_lora")
class InvocationDistanceLoRAPrefetch(InvocationDistancePrefetch):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._unserved: set[str] | None = None  # programs not yet served on any instance (lazily: all of them)

    def after_ranking(self, inst: InstanceRuntime, now: int, prio: dict[int, tuple],
                      order: list[tuple[tuple, str]]) -> None:
        super().after_ranking(inst, now, prio, order)
        lora = inst.compute if hasattr(inst.compute, "resident") else None
        if lora is None:
            return
        self._adapters_ahead(inst, lora, now, order)

    def _unserved_ahead(self, inst: InstanceRuntime) -> list[tuple[tuple, str]]:
        """Upcoming turns (within PREFETCH_STEPS) of programs no instance has served yet, when `inst` is the only
        instance new programs go to (otherwise where they will run is not known): an agent's first invocation
        has no KV to load back, but its adapter is known ahead (ScaleSim's simulator knows who acts next)."""
        ctx = self.ctx
        if ctx.entry_instances != [inst.name]:
            return []
        orch = self.orch
        if self._unserved is None:
            self._unserved = set(orch.programs)
        memo: dict[str, int] = {}
        out = []
        for pid in sorted(self._unserved):
            prog = orch.programs[pid]
            if pid in ctx.last_turn or prog.turns_left == 0 or prog.spec.lora is None:
                self._unserved.discard(pid)
                continue
            for tid, d in ctx.upcoming(pid, memo):
                if d <= PREFETCH_STEPS:
                    out.append(((d, FAR), tid))
                break  # the program's next turn only
        return out

    def _adapters_ahead(self, inst: InstanceRuntime, lora, now: int, order: list[tuple[tuple, str]]) -> None:
        orch = self.orch
        order = sorted([*order, *self._unserved_ahead(inst)])
        next_use: dict[int, tuple] = {}
        for r in [*inst.scheduler.running, *inst.scheduler.waiting]:  # arrived turns need theirs now
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
        # nearest first, at most prefetch_lookahead copies per pass (the knob that bounds the KV prefetch too),
        # each only into a free slot or the slot of an adapter needed later
        budget = max(1, self.cfg.prefetch_lookahead)
        for key, a in due:
            if budget <= 0:
                break
            if a in lora.resident:
                continue
            if not lora.prefetch(a, key):
                break
            budget -= 1
