"""Speculative decoding's draft cost as a layer over any compute model.

Why: with speculative decoding every decode sequence of a step is verified at width K + 1 (the scheduler
plans K draft tokens beyond its one new token; the inner model prices the verify pass like any batch of
that shape: projections over all K + 1 tokens, attention of K + 1 query rows over the sequence's
context), and before it the drafter proposes the K tokens, one position at a time at the step's decode
batch. What one position costs is the drafter's (frontend/compute/drafters.py: an EAGLE head, the model's
MTP modules, or a draft model's whole forward pass); K of them are the `spec_draft` operator this layer
adds to the step's epilogue, so it is in the Chakra trace and timed by the backend like the rest. The
drafters' weights and KV are resident (the config loader subtracts them from the KV cache). An n-gram
(prompt-lookup) drafter runs on the CPU and adds no accelerator work: no wrapper then.
"""

from __future__ import annotations

from frontend.compute.batch import BatchShape, OpCost
from frontend.compute.drafters import DRAFTERS, Drafter, DraftModel

DRAFT_OP = "spec_draft"


class SpeculativeCompute:
    """`inner`'s operators plus the drafter's K positions over the step's decode sequences."""

    draft_op = DRAFT_OP  # the operator the runtime sums into the draft time (the draft overhead share)

    def __init__(self, inner, num_draft_tokens: int, draft=None, method: str = "eagle") -> None:
        self.inner = inner
        self.k = num_draft_tokens
        self.width = num_draft_tokens + 1
        self.draft = draft  # a draft model's compute model (its whole forward per draft token), else None
        self.drafter: Drafter = DraftModel(draft) if draft is not None else DRAFTERS[method]()

    def __getattr__(self, item: str):  # everything else is the inner model's (EP routing, dense prefix, ...)
        return getattr(self.inner, item)

    def prologue_ops(self, shape: BatchShape) -> list[OpCost]:
        return self.inner.prologue_ops(shape)

    def layer_ops(self, shape: BatchShape, **kw) -> list[OpCost]:
        return self.inner.layer_ops(shape, **kw)

    def epilogue_ops(self, shape: BatchShape) -> list[OpCost]:
        ops = self.inner.epilogue_ops(shape)
        ctx = [c for q, c in zip(shape.q, shape.ctx, strict=True) if q == self.width and c > 0]
        if not ctx:
            return ops
        once = self.drafter.once(self.inner, BatchShape(q=[1] * len(ctx), ctx=ctx, num_sampled=len(ctx)))
        ns = sum(o.duration_ns for o in once)
        flops = sum(o.flops for o in once)
        nbytes = sum(o.bytes for o in once)
        return ops + [OpCost(DRAFT_OP, self.k * ns, self.k * flops, self.k * nbytes)]
