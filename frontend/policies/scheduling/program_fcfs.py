"""program_fcfs - Continuum (and InferCept's "original arrival time" order): order by program arrival, so a
program's later turns go before younger programs' turns; a turn whose KV a retention policy holds goes first
(its memory is already allocated)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from frontend.policies.common import SchedulingPolicy
from frontend.policies.registry import register_scheduling

if TYPE_CHECKING:
    from frontend.workload.request import Request


@register_scheduling("program_fcfs")
class ProgramFcfs(SchedulingPolicy):
    def key(self) -> Callable[[Request], tuple] | None:
        orch = self.orch

        def key(r: Request) -> tuple:
            ret = getattr(orch, "retention", None)
            held = ret is not None and r.program_id is not None and r.program_id in ret.pins
            arrival = orch.programs[r.program_id].arrival_ns if r.program_id else r.arrival_ns
            return (not held, arrival, r.turn_index, r.seq)
        return key
