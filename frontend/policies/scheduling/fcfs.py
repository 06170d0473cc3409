"""fcfs - vLLM: arrival order; victim = newest (the scheduler's own order: no key)."""

from __future__ import annotations

from frontend.policies.common import SchedulingPolicy
from frontend.policies.registry import register_scheduling


@register_scheduling("fcfs")
class Fcfs(SchedulingPolicy):
    pass
