"""saga - SAGA's tool-aware TTL retention (Guo, Wu, Yiu, "SAGA: Workflow-Atomic Scheduling for AI Agent
Inference on GPU Clusters", arXiv 2605.00528, HPDC 2026; its Algorithm 1 as AgentServeSim ships it, the
`saga-tool-ttl` KV policy in github.com/rajibrhasan/agentservesim, policies/saga.py).

When a turn ends and its program goes into a tool call, the program's KV is pinned in HBM for a TTL learned
per tool: the durations of that tool's finished calls are modelled as log-normal (an exponentially weighted
mean and variance of their logarithms), and the TTL is the model's `percentile` quantile, so a pin covers most
calls of that tool and no more. Under memory pressure the TTL shrinks: with u the instance's KV utilisation,
m = clip((u - soft) / (hard - soft), 0, 1) and the TTL is multiplied by 1 - 0.5 m (halved at `hard` and above).
Before a tool has a finished call the TTL is the run file's `ttl_ms` (cold start). Pins expire, break under
memory pressure and hold once the next turn has arrived until it is admitted, as every pin here.

Against Continuum's fixed TTL (ttl_pin), SAGA pins every tool call for a duration fitted to that tool (long
tools get long pins, short tools short ones) and yields memory as the pool fills. The paper's headline claim
is a lower task (program) completion time than vLLM with prefix caching (the `lru` retention here);
tests/test_policy_registry.py checks that direction. SAGA's other mechanisms are not in this file: the
workflow-aware eviction score, session-affinity routing with work stealing (the `session_affinity` router
covers affinity) and the Agent Fair Share preemption.

Parameters (constructor; the run file sets only the cold start):
  cold_start_ms  TTL while a tool has no finished call (default: policy.ttl_ms).
  percentile     quantile of the fitted log-normal the TTL covers (0.95).
  ema_weight     weight of the newest observation in the log mean / variance (0.2).
  soft, hard     KV utilisation where the pressure scaling starts and where it reaches its floor (0.7, 0.9).
  ttl_max_ms     cap on any TTL (300 s).
  window         finished calls per tool the fit looks back over (64; older ones weigh < 0.8**64).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import TYPE_CHECKING

from frontend.policies.common import PolicyContext, RetentionPolicyBase
from frontend.policies.registry import register_retention

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime
    from frontend.workload.request import Request


@register_retention("saga")
class SagaToolTtl(RetentionPolicyBase):
    def __init__(self, ctx: PolicyContext, cold_start_ms: float | None = None, percentile: float = 0.95,
                 ema_weight: float = 0.2, soft: float = 0.7, hard: float = 0.9, ttl_max_ms: float = 300_000.0,
                 window: int = 64) -> None:
        super().__init__(ctx)
        self.cold_start_ns = (ctx.cfg.ttl_ms if cold_start_ms is None else cold_start_ms) * 1e6
        if not 0 < percentile < 1 or not 0 < ema_weight <= 1 or not 0 <= soft < hard <= 1 or ttl_max_ms <= 0 \
                or window < 1:
            raise ValueError("saga: percentile in (0, 1), ema_weight in (0, 1], 0 <= soft < hard <= 1, "
                             "ttl_max_ms > 0 and window >= 1 are required")
        self.z = NormalDist().inv_cdf(percentile)
        self.ema_weight = ema_weight
        self.soft, self.hard = soft, hard
        self.ttl_max_ns = ttl_max_ms * 1e6
        self.window = window

    def tool_ttl_ns(self, tool: str, now: int) -> float:
        """The `percentile` quantile of the log-normal fitted to the tool's calls finished by `now`."""
        h = self.orch.tool_history.get(tool)
        done = sorted((end, g) for end, g in h[-4 * self.window:] if end <= now and g > 0)[-self.window:] if h else []
        if not done:
            return self.cold_start_ns
        a = self.ema_weight
        mean, var = math.log(done[0][1]), 0.0
        for _, g in done[1:]:
            d = math.log(g) - mean
            mean += a * d
            var = (1 - a) * (var + a * d * d)
        return math.exp(mean + self.z * math.sqrt(var))

    def pressure_scale(self, inst: InstanceRuntime) -> float:
        pool = inst.pool
        u = pool.num_used / pool.num_blocks if pool.num_blocks else 1.0
        m = min(1.0, max(0.0, (u - self.soft) / (self.hard - self.soft)))
        return 1.0 - 0.5 * m

    def on_turn_finish(self, inst: InstanceRuntime, req: Request, cached: list[int], now: int) -> bool:
        tools = self.orch.next_tools(req.request_id)
        ttl = 0
        if tools and cached:
            # the next turn waits for every tool after this one
            base = max(self.tool_ttl_ns(t, now) for t in tools)
            ttl = int(math.ceil(min(self.ttl_max_ns, base * self.pressure_scale(inst))))
        if ttl > 0:
            self.ctx.stats.ttl_ns.append(ttl)
            self.ctx.decide(now, req, "pin")
            self.ctx.pin(inst, req, cached, now + ttl)
            return True
        self.ctx.decide(now, req, "release")
        return False
