"""Expert parallelism as a layer over any compute model: the MoE block costs its slowest EP rank.

Why a wrapper: with `enable_expert_parallel` every EP rank holds E / EP whole experts (vLLM FusedMoE with
EP; the experts' own TP size is 1) and runs the token-expert assignments routed to them, so a MoE layer's
time is set by its most loaded rank, which depends on the routing of this iteration's tokens, not on the
token count alone. The inner model (roofline or profile) prices everything else as before; this layer
routes the tokens (frontend/compute/moe_routing.py) and asks the inner model's `moe_ops(tokens, routing)`
for the straggler's time.

Which tokens are routed: the MoE block of a DP group sees every member's tokens (vLLM's EP dispatch
all-gathers the hidden states over the DP ranks), so `tokens_routed = dp x tokens per member` (the padded
count of a lockstep step, frontend/cluster.py); without DP it is the instance's own tokens.

Random routers draw one sample per (run seed, instance, step index): the same step is routed the same
way whoever asks (the decode run-ahead's closed form and the general path see the same sample), so runs
with run-ahead on and off stay byte-identical. The balanced router is a closed form and memoized. The
trace router (`moe.routing: trace`) routes each step by its own requests' expert histograms: the runtime
hands the step's plan to `begin_step` (a DP group hands its lead member every member's requests).
"""

from __future__ import annotations

import zlib

import numpy as np

from frontend.compute.batch import BatchShape, OpCost
from frontend.compute.moe_routing import ExpertPlacement, ExpertTrace, RoutingResult, make_router

MOE_OPS = ("moe_gate", "moe", "shared_experts")  # the inner model's MoE block, replaced whole


class ExpertParallelCompute:
    """`inner`'s operators with the MoE block replaced by its expert-parallel cost."""

    def __init__(self, inner, num_experts: int, top_k: int, ep: int, placement: str, routing: str,
                 zipf_s: float, seed: int, name: str, dp: int = 1, expert_trace: ExpertTrace | None = None) -> None:
        self.inner = inner
        self.placement = ExpertPlacement(num_experts, ep, placement)  # type: ignore[arg-type]
        # routing "trace": each step's load from its own requests' expert histograms (moe_routing.ExpertTrace)
        self.trace = expert_trace if routing == "trace" else None
        params = {"zipf_s": zipf_s} if routing == "skewed" else {}
        self.router = None if self.trace is not None else make_router(routing, **params)
        self.deterministic = routing in ("balanced", "round_robin")
        self.batch: list[tuple[str, int]] = []  # (request id, tokens) of the step being costed (trace routing)
        self.top_k = top_k
        self.dp = dp
        self._seed = (seed, zlib.crc32(name.encode()))
        self.step_index = 0
        self._memo: dict[int, tuple[RoutingResult, list[OpCost]]] = {}
        self.last_routing: RoutingResult | None = None

    def __getattr__(self, item: str):  # everything else (arch, roof, attention_ns, ...) is the inner model's
        return getattr(self.inner, item)

    def begin_step(self, index: int, plan=None) -> None:
        """The step about to be costed: its index keys the random routers' sample, its requests the trace
        router's histograms."""
        self.step_index = index
        if self.trace is not None and plan is not None:
            self.batch = [(r.request_id, n) for r, n in zip(plan.requests, plan.num_new_tokens, strict=True)]

    def route(self, tokens_routed: int) -> RoutingResult:
        if self.trace is not None:
            return self.trace.route_batch(self.batch, self.top_k, self.placement, tokens_routed)
        if self.deterministic:
            return self.router.route(tokens_routed, self.top_k, self.placement)
        rng = np.random.default_rng([*self._seed, self.step_index, tokens_routed])
        return self.router.route(tokens_routed, self.top_k, self.placement, rng)

    def moe_block(self, tokens: int, tokens_routed: int) -> list[OpCost]:
        """The MoE operators of one layer: `tokens` enter this rank's block, `tokens_routed` are routed
        over all EP ranks (memoized by token counts for the deterministic routers)."""
        key = tokens * 4_000_003 + tokens_routed
        if self.deterministic:
            hit = self._memo.get(key)
            if hit is not None:
                self.last_routing = hit[0]
                return hit[1]
        routing = self.route(tokens_routed)
        ops = self.inner.moe_ops(tokens, routing)
        if self.deterministic and len(self._memo) < 65536:
            self._memo[key] = (routing, ops)
        self.last_routing = routing
        return ops

    def prologue_ops(self, shape: BatchShape) -> list[OpCost]:
        return self.inner.prologue_ops(shape)

    def epilogue_ops(self, shape: BatchShape) -> list[OpCost]:
        return self.inner.epilogue_ops(shape)

    def layer_ops(self, shape: BatchShape, tokens_routed: int | None = None) -> list[OpCost]:
        ops = self.inner.layer_ops(shape)
        k = next((i for i, o in enumerate(ops) if o.name in MOE_OPS), None)
        if k is None:
            return ops
        end = k
        while end < len(ops) and ops[end].name in MOE_OPS:
            end += 1
        t = shape.num_tokens
        block = self.moe_block(t, tokens_routed if tokens_routed is not None else self.dp * t)
        return ops[:k] + block + ops[end:]
